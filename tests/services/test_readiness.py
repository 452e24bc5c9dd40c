"""Issue 9 §1: no verdict before the stack can give one. The gateway's /ready (and each
validator's) is not ready until the configured packages are ingested and loaded; a validation
request that arrives meanwhile waits (bounded) or gets 503 + Retry-After + an OperationOutcome
saying why, on every path; a failed start-up ingest is named, with what to do.

The unit tier checks the rule (`assess`), the gate and what `make up` prints; the stack test runs
real NATS, S3 and Redis with storage, a validator in repository mode and ig-ingest pointed at a
folder that lacks R4 core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from fhirschema_bus.contracts import Heartbeat, IndexPackage, RepositoryState, StoredPackage, now
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.startup_watch import StartupWatch
from fhirschema_bus.storage import StorageClient, nats_request
from tests.conftest import PACKAGES
from tests.services.test_gateway_support import Stack, gateway_stack, settings_for, wait_ready

from gateway.app import create_app  # isort: skip  (on sys.path once test_gateway_support ran)
from gateway.service.readiness import NotReady, ReadinessGate, assess  # isort: skip

CORE = "hl7.fhir.r4.core#4.0.1"
US = "hl7.fhir.us.core#6.1.0"
BAD_PATIENT = {"resourceType": "Patient", "gender": "banana", "birthDate": "not-a-date"}
FHIR = {"content-type": "application/fhir+json"}


def beat(service: str, ready: bool | None = None, age: float = 0.0, **detail: Any) -> Heartbeat:
    if ready is not None:
        detail["ready"] = ready
    return Heartbeat(service=service, instance=f"{service}-1", version="t", at=now() - timedelta(seconds=age),
                     detail=detail)  # fmt: skip


def stored(spec: str) -> StoredPackage:
    return StoredPackage.model_validate(
        {
            "package": spec,
            "object": {"bucket": "b", "key": spec},
            "sha256": "0" * 64,
            "fhir_versions": ["4.0.1"],
        }
    )


# --- the rule ----------------------------------------------------------------------------------


def test_ready_only_when_a_ready_replica_holds_every_configured_package() -> None:
    empty = RepositoryState()
    a = assess([CORE], empty, [])
    assert not a.ready and a.missing == [CORE] and "no validator replica" in a.reason
    a = assess([CORE], empty, [beat("validator", False, reason="loading packages")])
    assert not a.ready and "not in the repository yet" in a.reason and "loading packages" in a.reason
    held = beat("validator", True, packages=[CORE])
    assert assess([CORE], RepositoryState(packages=[stored(CORE)]), [held]).ready
    # Another configured package the replica does not hold: not ready, and named.
    a = assess([CORE, US], RepositoryState(packages=[stored(CORE), stored(US)]), [held])
    assert not a.ready and a.missing == [US] and "no validator replica has loaded it" in a.reason
    # A heartbeat older than fresh_within is a replica that is gone.
    assert not assess([CORE], empty, [beat("validator", True, age=60, packages=[CORE])]).ready


def test_a_failed_ingest_is_named_with_what_to_do() -> None:
    ingest = beat("ig-ingest", failed={CORE: f"{CORE} not found in any source: /nowhere: no such package"})
    a = assess([CORE], RepositoryState(), [ingest, beat("validator", False, reason="x")])
    assert not a.ready and a.ingest_failures == {CORE: ingest.detail["failed"][CORE]}
    assert "could not be ingested" in a.reason and "FHIRSCHEMA_PACKAGE_SOURCES" in a.reason
    # Ingested since (registered): no longer a failure.
    assert assess([CORE], RepositoryState(packages=[stored(CORE)]), [ingest]).ingest_failures == {}


class Source:
    def __init__(self) -> None:
        self.beats: list[Heartbeat] = []
        self.reads = 0

    async def repository(self) -> RepositoryState:
        return RepositoryState(packages=[stored(CORE)])

    async def heartbeats(self) -> list[Heartbeat]:
        self.reads += 1
        return self.beats


async def test_the_gate_waits_a_bounded_time_then_says_why() -> None:
    source = Source()
    gate = ReadinessGate(source, [CORE], wait_seconds=0.6)
    t0 = time.monotonic()
    with pytest.raises(NotReady) as e:
        await gate.admit()
    assert 0.6 <= time.monotonic() - t0 < 2.0
    assert e.value.status == 503 and e.value.headers["Retry-After"] == "5"
    assert CORE in e.value.message and "Nothing was validated" in e.value.message
    # Ready while a request waits: it goes on.
    waiting = asyncio.create_task(gate.admit())
    await asyncio.sleep(0.25)
    source.beats = [beat("validator", True, packages=[CORE])]
    await asyncio.wait_for(waiting, 1.0)
    # Once ready, requests read nothing (a background refresh at most every refresh_seconds).
    reads = source.reads
    for _ in range(100):
        await gate.admit()
    assert source.reads <= reads + 1


def ready_body(ok: bool, **validators: Any) -> dict[str, Any]:
    """A body of the gateway's GET /ready (what `make up` reads: open, also with auth required)."""
    checks: dict[str, Any] = {"nats": {"ok": True}, "s3": {"ok": True}, "redis": {"ok": True}}
    checks["validators"] = {"ok": ok, "replicas": int(ok), "packages": [CORE], **validators}
    return {"status": "ready" if ok else "unavailable", "checks": checks}


def test_make_up_says_ready_and_is_loud_about_a_failed_ingest() -> None:
    watch = StartupWatch(started=100.0, remind_seconds=20)
    waiting = ready_body(False, error=f"{CORE} is not in the repository yet", missing=[CORE])
    assert watch.lines(waiting, 101) == []
    failed = ready_body(False, error="r", missing=[CORE], ingest_failures={CORE: "not found in any source"})
    (line,) = watch.lines(failed, 102)
    assert line.startswith(f"ERROR: {CORE} could not be ingested: not found in any source")
    assert "FHIRSCHEMA_PACKAGE_SOURCES=../shared/fhir/packages" in line
    assert watch.lines(failed, 103) == []  # said once
    (reminder,) = watch.lines(waiting, 122)
    assert f"not ready to validate yet (22s): validators: {CORE} is not in the repository yet" in reminder
    ready = ready_body(True)
    assert watch.lines(ready, 130) == [f"ready to validate after 30.0s ({CORE})"]
    assert watch.lines(ready, 131) == []
    redis_down = ready_body(True)
    redis_down["status"] = "unavailable"
    redis_down["checks"]["redis"] = {"ok": False, "error": "ConnectionError: refused"}
    assert watch.lines(redis_down, 140) == ["NOT ready to validate any more: redis: ConnectionError: refused"]


# --- on real servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def cold(nats_server, s3_server, redis_server, tmp_path_factory) -> AsyncIterator[Stack]:
    """A stack whose start-up ingest cannot find R4 core (an empty package folder)."""
    logs = tmp_path_factory.mktemp("cold")
    nowhere = tmp_path_factory.mktemp("no-packages")
    async with gateway_stack(
        nats_server,
        s3_server,
        redis_server,
        logs,
        ingest_sources=str(nowhere),
        wait=False,
        ready_wait_seconds=1.0,
    ) as st:
        yield st


async def until_json(
    client: httpx.AsyncClient, path: str, check: Any, timeout: float = 90.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(path)).json()
        if check(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


def not_ready(r: httpx.Response) -> str:
    """A 503 with Retry-After and an OperationOutcome: its diagnostics."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    assert body["issue"][0]["code"] == "transient"
    return str(body["issue"][0]["diagnostics"])


async def register_core(st: Stack) -> None:
    store = ObjectStore(st.settings.s3)
    data = (PACKAGES / f"{CORE}.tgz").read_bytes()
    ref = await store.aput_bytes(st.settings.s3.bucket_packages, f"test/{CORE}.tgz", data)
    await StorageClient(nats_request(st.nc)).index_package(IndexPackage(package=CORE, object=ref), timeout=60)


async def test_no_verdict_on_any_path_until_the_packages_are_loaded(
    cold: Stack, nats_server, s3_server, redis_server, tmp_path: Path
) -> None:
    async with cold.client() as c:
        # The start-up ingest failed: /ready and /info say which package, why and what to do.
        ready = await until_json(c, "/ready", lambda b: "could not be ingested" in str(b))
        assert ready["status"] == "unavailable" and ready["failed"] == ["validators"]
        assert (
            ready["missing"] == [CORE]
            and "FHIRSCHEMA_PACKAGE_SOURCES" in ready["checks"]["validators"]["error"]
        )
        assert (await c.get("/ready")).status_code == 503
        assert "not found" in ready["checks"]["validators"]["ingest_failures"][CORE]  # what make up prints
        info = (await c.get("/info")).json()
        assert info["configured_packages"] == [CORE] and not info["readiness"]["ready"]
        assert "not found" in info["readiness"]["ingest_failures"][CORE]

        # Every validation path: 503, Retry-After, an OperationOutcome naming the package.
        assert CORE in not_ready(await c.post("/validate", json=BAD_PATIENT))
        assert CORE in not_ready(await c.post("/$validate", json=BAD_PATIENT, headers=FHIR))
        assert CORE in not_ready(await c.post("/Patient/$validate", json=BAD_PATIENT, headers=FHIR))
        batch = b"\n".join(orjson.dumps(BAD_PATIENT) for _ in range(3))
        assert CORE in not_ready(
            await c.post("/validate/batch", content=batch, headers={"content-type": "application/x-ndjson"})
        )
        assert (await c.get("/jobs", params={"kind": "validate"})).json() == []  # nothing queued
        async with websockets.connect(f"{cold.ws_url}/validate/stream") as ws:
            await ws.send(orjson.dumps(BAD_PATIENT).decode())
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["index"] == 0 and frame["status"] == 503 and "valid" not in frame
        assert frame["outcome"]["resourceType"] == "OperationOutcome" and CORE in frame["error"]

        # A gateway that waits longer: a request that arrives now is answered once R4 core is
        # in the repository — with the engine's verdict, never a guess.
        patient_app = create_app(
            settings_for(nats_server.url, s3_server, redis_server.url, ready_wait_seconds=90.0)
        )
        transport = httpx.ASGITransport(patient_app)
        async with (
            patient_app.router.lifespan_context(patient_app),
            httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=120) as patient,
        ):
            waiting = asyncio.create_task(patient.post("/validate", json=BAD_PATIENT))
            await asyncio.sleep(1.5)
            assert not waiting.done()
            await register_core(cold)
            r = await asyncio.wait_for(waiting, 100)
        assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid", r.text
        diagnostics = " ".join(i["diagnostics"] for i in r.json()["issue"] if i["severity"] == "error")
        assert "banana" in diagnostics and "not-a-date" in diagnostics

        # The first request right after /ready: the engine's verdict.
        await wait_ready(c, timeout=60)
        r = await c.post("/validate", json=BAD_PATIENT)
        assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid", r.text
        r = await c.post("/validate", json={"resourceType": "Foo"})
        assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid", r.text
        info = (await c.get("/info")).json()
        assert (
            info["readiness"]["ready"]
            and CORE in info["packages"]
            and info["readiness"]["ingest_failures"] == {}
        )
