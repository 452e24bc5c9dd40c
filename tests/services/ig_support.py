"""What the /ig tests on real servers share: the gateway in-process (its container started by
hand, auth off) on the module's NATS, S3 and Redis, beside an ig-ingest worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from storage_service.app import Storage

from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import IngestSettings, PackageSettings
from tests.services.test_gateway_support import create_app, settings_for
from tests.services.test_ig_ingest import run_ingest


@asynccontextmanager
async def gateway_client(
    nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer, sources: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with these configured package sources (what a request's `registry` may name)."""
    settings = settings_for(nats_server.url, s3_server, redis_server.url)
    settings.packages = PackageSettings(package_sources=sources)
    app = create_app(settings)
    await app.state.container.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://gw", timeout=30
        ) as c:
            yield c
    finally:
        await app.state.container.stop()


@asynccontextmanager
async def ig_api(
    storage: Storage, nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer,
    sources: str, ingest: IngestSettings | None = None,
) -> AsyncIterator[httpx.AsyncClient]:  # fmt: skip
    """The gateway and an ig-ingest worker reading `sources` (nothing ingested at start)."""
    worker = await run_ingest(storage, nats_server, sources, ingest=ingest)
    try:
        async with gateway_client(nats_server, s3_server, redis_server, sources) as c:
            yield c
    finally:
        await worker.app.stop()


async def process(c: httpx.AsyncClient, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """POST /ig/process, then GET /ig/status/{job} until the job is final: the job."""
    r = await c.post("/ig/process", json=body)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + timeout
    while (job := (await c.get(r.headers["location"])).json())["state"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
    return job
