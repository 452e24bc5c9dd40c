"""`python -m gateway [--config FILE] [flags]`: serve the app with uvicorn on the configured
host/port, reloading what can change safely on SIGHUP or a change of the config file."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import uvicorn

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import load, watch
from fhirschema_bus.settings import (
    GatewaySettings,
    LogSettings,
    NatsSettings,
    PackageSettings,
    RedisSettings,
    S3Settings,
)
from gateway.app import create_app
from gateway.bootstrap import Settings, bootstrap

CONFIG = ServiceConfig(
    "gateway", LogSettings, GatewaySettings, NatsSettings, S3Settings, RedisSettings, PackageSettings
)


def main(argv: Sequence[str] | None = None) -> None:
    loaded = load(CONFIG, argv)
    settings = Settings(
        gateway=loaded.get(GatewaySettings), nats=loaded.get(NatsSettings),
        s3=loaded.get(S3Settings), redis=loaded.get(RedisSettings), packages=loaded.get(PackageSettings),
    )  # fmt: skip
    container = bootstrap(settings)
    server = uvicorn.Server(uvicorn.Config(
        create_app(container=container), host=settings.gateway.host, port=settings.gateway.port,
        log_level="warning", access_log=False, timeout_graceful_shutdown=settings.gateway.drain_seconds,
    ))  # fmt: skip

    async def serve() -> None:
        async with watch(loaded, container.reloads).running():
            await server.serve()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
