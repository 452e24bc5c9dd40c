"""Real servers for the service tests: one NATS, one S3 and one Redis per test module.

Each is started on first use (so a test run that needs only Redis never pays for S3) and stopped
by PID when the module ends: modules never see each other's streams, consumers or keys. Tests that use them are marked `servers` automatically, so
`-m "not servers"` selects the tests that need no server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from fhirschema_bus.servers import RunningServer, ServerStartError, start_nats, start_redis, start_s3
from fhirschema_bus.topology import ensure_topology

SERVER_FIXTURES = frozenset({"nats_server", "s3_server", "redis_server"})


def _serve(
    tmp_path_factory: pytest.TempPathFactory, name: str, start: Callable[[Path], RunningServer]
) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp(name)
    try:
        srv = start(base)
    except ServerStartError as e:
        # Fail, not skip: these servers come from the dev wheels and are required.
        pytest.fail(f"could not start {name}: {e}", pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, "nats", start_nats)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, "s3", start_s3)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, "redis", start_redis)


@pytest.fixture
async def nc(nats_server: RunningServer) -> AsyncIterator[Client]:
    """A client of the module's NATS server, with the JetStream topology in place."""
    client = await nats.connect(nats_server.url)
    await ensure_topology(client.jetstream())
    yield client
    await client.drain()


@pytest.fixture(scope="module")
async def stack(
    nats_server: RunningServer,
    s3_server: RunningServer,
    redis_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Any]:
    """The gateway in-process (uvicorn on a free port) with validator, storage and converter
    services on the module's servers (`tests.services.test_gateway_support.Stack`)."""
    from tests.services.test_gateway_support import gateway_stack

    async with gateway_stack(nats_server, s3_server, redis_server, tmp_path_factory.mktemp("gw")) as st:
        yield st


@pytest.fixture
async def storage(
    nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer
) -> AsyncIterator[Any]:
    """The storage service in-process on the module's servers (a module may define its own)."""
    from tests.services.test_storage_service import start_storage

    st = await start_storage(nats_server, s3_server, redis_server)
    yield st
    await st.app.stop()


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[Any]:
    """An httpx client of the module's gateway stack."""
    async with stack.client() as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
