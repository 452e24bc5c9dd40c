"""`python -m ig_ingest`: run the worker built by bootstrap()."""

from __future__ import annotations

import asyncio
import logging

from ig_ingest.app import bootstrap


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ig-ingest %(levelname)s %(message)s")
    asyncio.run(bootstrap().run())


if __name__ == "__main__":
    main()
