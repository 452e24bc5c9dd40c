"""`python -m converter_service`: one converter replica, until SIGTERM/SIGINT."""

import asyncio
import logging

from converter_service import bootstrap


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(bootstrap().run())


if __name__ == "__main__":
    main()
