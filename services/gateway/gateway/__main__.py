"""`python -m gateway [--config FILE] [flags]`: serve the app with uvicorn on the configured
host/port, reloading what can change safely on SIGHUP or a change of the config file."""

from __future__ import annotations

from fhirschema_bus import optional_imports

if __name__ == "__main__":  # this process is the service: before any library is imported
    optional_imports.service_process(worker=False)

import asyncio
import logging
import sys
from collections.abc import Sequence

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import exit_now, load, watch
from fhirschema_bus.settings import (
    AuthSettings,
    CorsSettings,
    GatewaySettings,
    LogSettings,
    NatsSettings,
    PackageSettings,
    RateLimitSettings,
    RedisSettings,
    S3Settings,
)
from gateway.app import create_app
from gateway.bootstrap import Container, Settings, bootstrap
from gateway.http_server import GatewayServer, server_config
from gateway.service.auth import KeyFileError

CONFIG = ServiceConfig(
    "gateway", LogSettings, GatewaySettings, NatsSettings, S3Settings, RedisSettings, PackageSettings,
    AuthSettings, RateLimitSettings, CorsSettings,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    loaded = load(CONFIG, argv)
    settings = Settings(
        gateway=loaded.get(GatewaySettings), nats=loaded.get(NatsSettings),
        s3=loaded.get(S3Settings), redis=loaded.get(RedisSettings), packages=loaded.get(PackageSettings),
        auth=loaded.get(AuthSettings), rate_limit=loaded.get(RateLimitSettings), cors=loaded.get(CorsSettings),
    )  # fmt: skip
    container = _bootstrap(settings)
    server = GatewayServer(server_config(
        create_app(container=container), settings.gateway.host, settings.gateway.port,
        settings.gateway.max_header_bytes,
        # log_config=None: uvicorn's loggers go through our root handler (logs.py), not its own
        # coloured ones; the access log is ours (gateway/access.py: route template, request id).
        log_level="warning", log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.gateway.drain_seconds,
    ))  # fmt: skip

    async def serve() -> None:
        async with watch(loaded, container.reloads).running():
            await server.serve()

    # uvicorn.run would pick the event loop itself (uvloop when installed: GET /health answered
    # 2.7x as many requests per second as on asyncio's loop, bench/gateway_bench.py); serving our
    # own Server, we ask its config for the same choice.
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(serve())
    # Drained and closed: leave at once, as the workers do (entry.exit_now). The interpreter's
    # own teardown of the heap made a stop within the first second, before the start-up heap is
    # frozen, 0.44-0.55 s; now 0.13-0.23 s (SIGTERM right after /health, 3 runs each).
    exit_now()


def _bootstrap(settings: Settings) -> Container:
    """The container, or exit 2 saying what to change (as a bad setting does)."""
    try:
        if problem := settings.auth.problem():
            raise KeyFileError(problem)
        container = bootstrap(settings)
    except KeyFileError as e:
        print(f"gateway: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    log = logging.getLogger("gateway.auth")
    if not container.auth.required:
        log.warning("FHIRSCHEMA_AUTH=off: anyone who reaches this port may call every route")
    else:
        keys = len(container.key_file.keys) if container.key_file else 0
        log.info("authentication required: %d API keys from %s", keys, settings.auth.api_keys_file)
    return container


if __name__ == "__main__":
    main()
