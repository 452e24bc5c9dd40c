"""The /ig routes on real servers (issue 11 §4): the gateway, ig-ingest and storage on a real
NATS, S3 and Redis, packages from the local registry server. POST /ig/process queues a job
that ig-ingest runs; GET /ig/status/{job} lists its closure; GET /ig/status what is ingested;
GET /ig/registry searches the configured registry through ig-ingest; GET/PUT /ig/schedule are
answered by ig-ingest from KV_INGEST (and 503 + Retry-After while no ig-ingest runs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from storage_service.app import Storage

from fhirschema_bus.servers import RunningServer
from tests.services.ig_support import gateway_client, ig_api
from tests.services.registry_server import Registry, make_package, profile, serve_registry

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with serve_registry(tmp_path) as reg:
        reg.add("example.terms", "1.0.0", make_package("example.terms", "1.0.0"), "Example terms")
        reg.add("example.profiles", "2.0.0", make_package(
            "example.profiles", "2.0.0", dependencies={"example.terms": "1.0.0", "example.gone": "9.9.9"},
            resources=[profile("p1"), profile("p2")],
        ), "Example profiles")  # fmt: skip
        yield reg


@pytest.fixture
async def api(
    storage: Storage, nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer,
    registry: Registry,
) -> AsyncIterator[httpx.AsyncClient]:  # fmt: skip
    """The gateway in-process and an ig-ingest worker on the local registry."""
    async with ig_api(storage, nats_server, s3_server, redis_server, registry.base) as c:
        yield c


async def final(api: httpx.AsyncClient, path: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await api.get(path)
        assert r.status_code == 200, r.text
        if r.json()["state"] in FINAL:
            return r.json()
        assert time.monotonic() < deadline, r.json()
        await asyncio.sleep(0.1)


async def test_process_then_status_lists_the_whole_closure(
    api: httpx.AsyncClient, registry: Registry
) -> None:
    r = await api.post("/ig/process", json={"packages": ["example.profiles"]})
    assert r.status_code == 202, r.text
    job = await final(api, r.headers["location"])
    assert job["job"] == r.json()["job"] and job["state"] == "succeeded", job
    assert job["finished"] and job["created"] <= job["finished"]
    by = {p["name"]: p for p in job["packages"]}
    assert set(by) == {"example.profiles", "example.terms", "example.gone"}
    top = by["example.profiles"]
    assert (top["version"], top["state"], top["schemas"], top["source"]) == (
        "2.0.0",
        "succeeded",
        2,
        registry.base,
    )
    assert len(top["sha256"]) == 64 and top["missing_dependencies"] == ["example.gone#9.9.9"]
    assert (by["example.terms"]["state"], by["example.terms"]["version"]) == ("succeeded", "1.0.0")
    assert by["example.gone"]["state"] == "failed" and "not found" in by["example.gone"]["error"]
    # the schemas are queryable through the gateway
    listed = await api.get("/schemas", params={"package": "example.profiles#2.0.0"})
    assert listed.headers["x-total-count"] == "2", listed.text
    overview = (await api.get("/ig/status")).json()
    ingested = {f"{p['name']}#{p['version']}": p for p in overview["packages"]}
    assert {"example.profiles#2.0.0", "example.terms#1.0.0"} <= set(ingested)
    assert ingested["example.profiles#2.0.0"]["sha256"] == top["sha256"]
    assert (
        ingested["example.profiles#2.0.0"]["ingested_at"] and ingested["example.terms#1.0.0"]["schemas"] == 0
    )
    assert overview["jobs"][0]["job"] == job["job"]


async def test_registry_choice_and_no_dependencies(api: httpx.AsyncClient, registry: Registry) -> None:
    r = await api.post(
        "/ig/process", json={"packages": ["example.terms"], "registry": "http://127.0.0.1:9/x"}
    )
    assert r.status_code == 400 and "not configured" in r.text
    body = {"packages": ["example.profiles#2.0.x"], "dependencies": False, "registry": registry.base + "/"}
    job = await final(api, (await api.post("/ig/process", json=body)).json()["status"])
    assert job["state"] == "succeeded", job
    assert [(p["name"], p["version"]) for p in job["packages"]] == [("example.profiles", "2.0.0")]
    assert not any("127.0.0.1:9" in p for p in registry.requests)


async def test_registry_search_through_ig_ingest(api: httpx.AsyncClient, registry: Registry) -> None:
    r = await api.get("/ig/registry", params={"name": "example"})
    assert r.status_code == 200, r.text
    found = {p["name"]: p for p in r.json()}
    assert set(found) == {"example.profiles", "example.terms"}
    assert (
        found["example.profiles"]["versions"] == ["2.0.0"] and found["example.profiles"]["latest"] == "2.0.0"
    )
    assert found["example.profiles"]["registry"] == registry.base
    assert {"name", "description", "fhirVersion", "latest", "versions", "registry"} == set(
        found["example.terms"]
    )
    assert (await api.get("/ig/status/not-a-job")).status_code == 404


async def test_schedule_through_ig_ingest(api: httpx.AsyncClient) -> None:
    sched = {"cron": "17 3 * * *", "timezone": "Europe/Berlin", "packages": ["example.profiles"],
             "masks": ["example.*"], "enabled": True}  # fmt: skip
    r = await api.put("/ig/schedule", json=sched)
    assert r.status_code == 200, r.text
    got = (await api.get("/ig/schedule")).json()
    assert {k: got[k] for k in sched} == sched and got["last_run"] is None
    # 03:17 in Berlin is 02:17 UTC in December: the next tick evaluated in the schedule's zone
    assert got["next_run"][11:16] == "03:17" and got["next_run"].endswith("+01:00"), got
    bad = await api.put("/ig/schedule", json={**sched, "cron": "17 25 * * *"})
    assert bad.status_code == 400 and "body.cron" in bad.json()["issue"][0]["diagnostics"], bad.text
    # disabled (nothing runs in this module's later tests): no next run, the rest kept
    off = (await api.put("/ig/schedule", json={**sched, "enabled": False})).json()
    assert off["enabled"] is False and off["next_run"] is None and off["packages"] == ["example.profiles"]
    assert (await api.get("/ig/schedule")).json() == off


async def test_schedule_without_ig_ingest_is_503(
    nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer
) -> None:
    async with gateway_client(nats_server, s3_server, redis_server) as c:
        for r in (await c.get("/ig/schedule"), await c.put("/ig/schedule", json={"cron": "0 1 * * *"})):
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert "fhirschema.schedule" in r.json()["issue"][0]["diagnostics"]
