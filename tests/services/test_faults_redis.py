"""Valkey killed with SIGKILL and restarted empty while the stack serves (issue 13): the schema
repository is whole again within a bounded time (every R4 core schema listed, url lookups
resolve), a batch running across the restart stores every result exactly once, and a validator
replica started after the restart gives the engine's verdict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fhirschema_bus.processes import start_service, stop_process
from fhirschema_bus.servers import RunningServer
from tests.conftest import PACKAGES
from tests.services.test_faults import ITEMS, batch_in_flight, check_results
from tests.services.test_gateway_support import Stack, gateway_stack, service_env

pytestmark = pytest.mark.slow
CORE = "hl7.fhir.r4.core#4.0.1"
REBUILT_WITHIN = 30.0  # seconds from Valkey's return to the whole index answering
BAD_PATIENT = {"resourceType": "Patient", "gender": "banana", "birthDate": "not-a-date"}


@pytest.fixture(scope="module")
async def stack(nats_server, s3_server, redis_server, tmp_path_factory) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("redis-faults")
    async with gateway_stack(
        nats_server, s3_server, redis_server, logs, ingest_sources=str(PACKAGES),
        batch_chunk_items=32, max_batch_items=ITEMS,
    ) as st:  # fmt: skip
        st.logs = logs  # type: ignore[attr-defined]
        yield st


async def core_listed(client: httpx.AsyncClient) -> int:
    r = await client.get("/schemas", params={"package": CORE, "limit": 1000})
    return len({rec["id"] for rec in r.json()}) if r.status_code == 200 else -r.status_code


async def until(check: object, timeout: float) -> float:
    t0 = time.monotonic()
    while not await check():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"not within {timeout:.0f}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def test_valkey_restarted_empty_mid_batch(stack: Stack, redis_server: RunningServer) -> None:
    async with stack.client() as client:

        async def all_core() -> bool:
            return await core_listed(client) == 658

        await until(all_core, 300)  # ig-ingest stored every R4 core schema
        job = await batch_in_flight(client)
        redis_server.kill()
        await asyncio.sleep(2)
        redis_server.restart()  # no persistence in the tests: it comes back empty
        took = await until(all_core, REBUILT_WITHIN)
        obs = await client.get(
            "/schemas", params={"url": "http://hl7.org/fhir/StructureDefinition/Observation"}
        )
        assert obs.status_code == 200 and [r["package"] for r in obs.json()] == [CORE]
        one = await client.get(f"/schemas/{obs.json()[0]['id']}")
        assert one.status_code == 200 and one.json()["type"] == "Observation"
        status = await check_results(client, job)  # every index exactly once
        assert status["state"] == "succeeded", status
        log = (stack.logs / "storage.log").read_text()  # type: ignore[attr-defined]
        assert "schema index rebuilt from S3: 658 schemas" in log and "Redis lost the index" in log
        print(f"index whole again {took:.1f} s after Valkey's return")

        # A replica that starts after the restart (a new pod) gives the engine's verdict.
        logs: Path = stack.logs  # type: ignore[attr-defined]
        stop_process(stack.procs["validator"])
        stack.procs["validator"] = start_service(
            "validator_service", service_env(stack.settings, repository=True), logs / "validator-new.log"
        )
        deadline = time.monotonic() + 180
        while True:
            r = await client.post("/validate", json=BAD_PATIENT)
            if r.status_code == 200:
                break
            # No verdict yet: 503 (not ready), or 504 when the stopped replica's last heartbeat was
            # still fresh and the new one, loaded, takes longer than the sync wait to start.
            assert r.status_code in (503, 504) and time.monotonic() < deadline, r.text
            await asyncio.sleep(0.5)
        issues = r.json()["issue"]
        assert any(i["severity"] == "error" for i in issues), issues
