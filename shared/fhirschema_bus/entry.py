"""How a service process starts: its configuration loaded (flags, environment, secret files,
config file), logging at the configured level, reloads watched (SIGHUP, the file), then served
until SIGTERM/SIGINT. The services' `__main__` modules are this plus their `ServiceConfig`."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fhirschema_bus import logs, tracing
from fhirschema_bus.config import ConfigError, LoadedConfig, ServiceConfig
from fhirschema_bus.reload import ConfigWatcher, Reloads
from fhirschema_bus.settings import LogSettings

if TYPE_CHECKING:  # the gateway starts here too, and needs no FastStream (about 0.1 s CPU to import)
    from fhirschema_bus.worker import Worker


def load(config: ServiceConfig, argv: Sequence[str] | None = None) -> LoadedConfig:
    """The configuration, or exit 2 with the message saying what to change. The service's imports
    are done: the collector, paused by its `__main__` while they ran, runs again (what imports
    build lives as long as the process; collecting it on the way cost the gateway's imports 4% of
    their instructions: 2410 -> 2308 M, callgrind)."""
    gc.enable()
    try:
        loaded = config.load(argv)
    except ConfigError as e:
        print(f"{config.service}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    log = loaded.get(LogSettings)
    logs.setup(service_name(config.service), log.level, log.format)
    tracing.configure(service_name(config.service))  # off unless OTEL_* say where traces go
    return loaded


def service_name(module: str) -> str:
    """`validator_service` → `validator`, `ig_ingest` → `ig-ingest`: as the workers call themselves."""
    return module.removesuffix("_service").replace("_", "-")


def watch(loaded: LoadedConfig, reloads: Reloads) -> ConfigWatcher:
    """Every service reloads its log level; the rest is what its bootstrap registered."""
    reloads.on(LogSettings, LogSettings.apply)
    return ConfigWatcher(loaded, reloads)


def run_worker(
    config: ServiceConfig, build: Callable[[LoadedConfig], Worker], argv: Sequence[str] | None = None
) -> None:
    loaded = load(config, argv)

    async def serve() -> None:
        worker = build(loaded)
        async with watch(loaded, worker.reloads).running():
            await worker.run()

    asyncio.run(serve())
    exit_now()


def exit_now() -> None:
    """Drained and closed: leave at once. Otherwise the interpreter still joins executor threads
    finishing their work (concurrent.futures does at exit: the validator's warm-up, after ready)
    and tears down the heap of loaded packages — measured on an idle validator: SIGTERM to exit
    1.5 s, 1 s of it after its shutdown had ended; up to 4.2 s at load 14."""
    provider = tracing.provider()
    if provider is not None:
        provider.shutdown()  # the spans atexit would have flushed
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
