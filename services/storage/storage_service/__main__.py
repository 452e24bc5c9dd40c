"""`python -m storage_service`: run the FastStream app built by bootstrap()."""

from __future__ import annotations

import asyncio
import logging

from storage_service.app import bootstrap


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s storage %(levelname)s %(message)s")
    asyncio.run(bootstrap().app.run())


if __name__ == "__main__":
    main()
