"""Faults mid-batch (issue 9 §6): NATS, the storage service, Valkey and SeaweedFS killed with
SIGKILL while a batch runs, then restarted. Every job ends with every index exactly once in its
results, or in a clear failed state whose counts equal its stored results; while NATS is down a
batch request gets a 503 OperationOutcome with Retry-After, or succeeds once NATS is back within
the gateway's publish budget (never a 500 text/plain)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from fhirschema_bus.servers import RunningServer
from tests.services.test_gateway_support import Stack, gateway_stack, start_service

pytestmark = pytest.mark.slow

NDJSON = {"content-type": "application/x-ndjson"}
ITEMS = 3000
BUDGET = 20.0  # the gateway's publish budget in this module


def batch(n: int = ITEMS) -> bytes:
    good = {"resourceType": "Patient", "gender": "female"}
    bad = {"resourceType": "Patient", "gender": "robot"}
    return b"\n".join(orjson.dumps({**(bad if i % 7 == 0 else good), "id": f"p{i}"}) for i in range(n))


@pytest.fixture(scope="module")
async def stack(nats_server, s3_server, redis_server, tmp_path_factory) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("faults")
    gateway = {"publish_budget_seconds": BUDGET, "batch_chunk_items": 32, "max_batch_items": ITEMS}
    async with gateway_stack(nats_server, s3_server, redis_server, logs, **gateway) as st:
        yield st


async def final(client: httpx.AsyncClient, job: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = await client.get(f"/validate/status/{job}")
            if r.status_code == 200 and r.json()["state"] in ("succeeded", "failed", "cancelled"):
                return r.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"job {job} not final in {timeout:.0f}s"
        await asyncio.sleep(0.2)


async def check_results(client: httpx.AsyncClient, job: str) -> dict[str, Any]:
    """Every index exactly once, counts equal to the stored results (or a clear failed state)."""
    status = await final(client, job)
    r = await client.get(
        f"/validate/results/{job}", params={"wait": 10 if status["state"] == "succeeded" else 0}
    )
    indexes = [orjson.loads(line)["index"] for line in r.text.splitlines()]
    assert len(indexes) == len(set(indexes)), "an index appears twice"
    assert status["done"] == len(indexes) == status["valid"] + status["invalid"] + status["failed"], status
    if status["state"] == "succeeded":
        assert sorted(indexes) == list(range(status["total"]))
        assert status["invalid"] == len(range(0, status["total"], 7))
    else:
        assert status["state"] == "failed" and status["error"], status
    return status


async def batch_in_flight(client: httpx.AsyncClient) -> str:
    """A batch's job id once some of its items are done (a fault then hits a batch in flight)."""
    r = await client.post("/validate/batch", content=batch(), headers=NDJSON)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    deadline = time.monotonic() + 60
    while (await client.get(f"/validate/status/{job}")).json()["done"] == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return str(job)


def later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


async def test_nats_down_while_the_batch_arrives(stack: Stack, nats_server: RunningServer) -> None:
    async with stack.client() as client:
        nats_server.kill()
        try:
            t0 = time.monotonic()
            r = await client.post("/validate/batch", content=batch(50), headers=NDJSON)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/fhir+json")
            assert r.json()["resourceType"] == "OperationOutcome" and int(r.headers["retry-after"]) > 0
            assert time.monotonic() - t0 >= BUDGET * 0.9  # it waited for NATS, within the budget
        finally:
            nats_server.restart()
        # Down again, back within the budget: the request succeeds.
        nats_server.kill()
        restart = later(3.0, nats_server.restart)
        r = await client.post("/validate/batch", content=batch(50), headers=NDJSON)
        restart.join()
        assert r.status_code == 202, r.text
        assert (await check_results(client, r.json()["job"]))["state"] == "succeeded"


async def test_nats_down_right_after_the_job_is_created(
    stack: Stack, nats_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stack.app.state.container.jobs()
    create = store.create
    restarts: list[threading.Thread] = []

    async def create_then_fail(*args: Any, **kw: Any) -> Any:
        job = await create(*args, **kw)
        if not restarts:
            nats_server.kill()
            restarts.append(later(2.0, nats_server.restart))
        return job

    monkeypatch.setattr(store, "create", create_then_fail)
    async with stack.client() as client:
        r = await client.post("/validate/batch", content=batch(), headers=NDJSON)
        restarts[0].join()
        assert r.status_code == 202, r.text  # its chunks were published again after the reconnect
        status = await check_results(client, r.json()["job"])
    assert status["state"] == "succeeded", status


@pytest.mark.parametrize(
    ("server", "down"), [("nats_server", 2), ("redis_server", 2), ("s3_server", 2), ("s3_server", 45)]
)
async def test_server_killed_mid_batch(
    stack: Stack, request: pytest.FixtureRequest, server: str, down: float
) -> None:
    victim: RunningServer = request.getfixturevalue(server)
    async with stack.client() as client:
        job = await batch_in_flight(client)
        victim.kill()
        await asyncio.sleep(down)
        victim.restart()
        status = await check_results(client, job)
        assert status["state"] == "succeeded", status
        # The storage service assembles the results into S3 once it can (also after 45 s down).
        deadline = time.monotonic() + 90
        while not (await client.get(f"/validate/status/{job}")).json()["results"]:
            assert time.monotonic() < deadline, "results never assembled"
            await asyncio.sleep(0.2)


async def test_storage_service_killed_mid_batch(stack: Stack, tmp_path: Any) -> None:
    from tests.services.test_gateway_support import service_env

    async with stack.client() as client:
        job = await batch_in_flight(client)
        old = stack.procs["storage"]
        old.kill()
        old.wait()
        await asyncio.sleep(1)
        stack.procs["storage"] = start_service(
            "storage_service", service_env(stack.settings), tmp_path / "s.log"
        )
        status = await check_results(client, job)
    assert status["state"] == "succeeded", status
