"""Registry faults through the API (issue 11 §5), on real servers: what test_registry_client.py
shows for the client alone, seen at the pipeline's level through POST /ig/process and
GET /ig/status/{job} — transient faults are ridden out, a registry too slow moves on to the
next, a broken package fails alone and stores nothing, a dependency cycle ends."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from storage_service.app import Storage

from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import IngestSettings
from tests.services.ig_support import ig_api, process
from tests.services.registry_server import Registry, make_package, profile, serve_registry

# Short timeouts so that a slow registry is given up on within the test.
LIMITS = IngestSettings(timeout_seconds=0.5, download_timeout_seconds=2.0, attempts=3, max_retry_after_seconds=5.0, ci_build_url="")  # fmt: skip


def pkg(name: str, version: str = "1.0.0", **kw: Any) -> bytes:
    return make_package(name, version, resources=[profile(name.replace(".", "-"))], **kw)


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    with serve_registry(None) as primary, serve_registry(None, "/packages", "secondary") as secondary:
        yield primary, secondary


@pytest.fixture
async def api(
    storage: Storage, nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer,
    registries: tuple[Registry, Registry],
) -> AsyncIterator[httpx.AsyncClient]:  # fmt: skip
    sources = ",".join(r.base for r in registries)
    async with ig_api(storage, nats_server, s3_server, redis_server, sources, ingest=LIMITS) as c:
        yield c


def by_name(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in job["packages"]}


async def test_503s_and_429_are_ridden_out(
    api: httpx.AsyncClient, registries: tuple[Registry, Registry]
) -> None:
    primary, _ = registries
    primary.add("ok.retry", "1.0.0", pkg("ok.retry"))
    primary.fail_next = 2  # the listing: 503, 503, then answered
    job = await process(api, {"packages": ["ok.retry#1.0.0"]})
    assert job["state"] == "succeeded" and by_name(job)["ok.retry"]["source"] == primary.base, job
    assert primary.fail_next == 0  # both 503s were answered
    primary.add("ok.throttled", "1.0.0", pkg("ok.throttled"))
    primary.throttle_next, primary.retry_after = 1, "1"
    t0 = time.monotonic()
    job = await process(api, {"packages": ["ok.throttled#1.0.0"]})
    assert job["state"] == "succeeded" and by_name(job)["ok.throttled"]["source"] == primary.base, job
    assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 waited for, not the next registry
    assert sum("ok.throttled" in p for p in primary.requests) >= 3  # 429, listing, tarball


async def test_a_registry_slower_than_the_timeout_is_left_for_the_next(
    api: httpx.AsyncClient, registries: tuple[Registry, Registry]
) -> None:
    primary, secondary = registries
    data = pkg("slow.pkg")
    primary.add("slow.pkg", "1.0.0", data)
    secondary.add("slow.pkg", "1.0.0", data)
    primary.slow, primary.slow_seconds = {"slow.pkg/1.0.0"}, 3.0  # the tarball stalls
    job = await process(api, {"packages": ["slow.pkg#1.0.0"]})
    assert job["state"] == "succeeded" and by_name(job)["slow.pkg"]["source"] == secondary.base, job
    # only the slow one: the package fails, saying why, and the job says so
    primary.add("slow.only", "1.0.0", pkg("slow.only"))
    primary.slow = {"slow.only/1.0.0"}
    job = await process(api, {"packages": ["slow.only#1.0.0"], "registry": primary.base})
    only = by_name(job)["slow.only"]
    assert job["state"] == "failed" and only["state"] == "failed", job
    assert "slow.only" in only["error"] and "tim" in only["error"].lower(), only


async def test_broken_packages_fail_alone_and_store_nothing(
    api: httpx.AsyncClient, registries: tuple[Registry, Registry], nc: Client
) -> None:
    primary, _ = registries
    primary.add("good.pkg", "1.0.0", pkg("good.pkg"))
    primary.add("corrupt.pkg", "1.0.0", pkg("corrupt.pkg"))
    primary.add("shasum.pkg", "1.0.0", pkg("shasum.pkg"))
    primary.add("other.pkg", "1.0.0", pkg("other.pkg", "2.0.0"))  # package.json names 2.0.0
    primary.corrupt.add("corrupt.pkg#1.0.0")
    primary.wrong_shasum.add("shasum.pkg#1.0.0")
    # corrupt bytes fail the advertised SHA-1 first (or the gzip/tar read when none is given)
    bad = {
        "corrupt.pkg": r"corrupt|SHA-1|shasum",
        "shasum.pkg": r"dist\.shasum",
        "other.pkg": r"names other\.pkg#2\.0\.0",
    }
    job = await process(
        api, {"packages": ["good.pkg#1.0.0", *(f"{n}#1.0.0" for n in bad)], "registry": primary.base}
    )
    assert job["state"] == "failed", job
    got = by_name(job)
    assert (got["good.pkg"]["state"], got["good.pkg"]["schemas"]) == ("succeeded", 1), job
    for name, says in bad.items():
        assert got[name]["state"] == "failed" and re.search(says, got[name]["error"]), got[name]
        assert name in got[name]["error"]
        assert got[name]["schemas"] == 0
        listed = await api.get("/schemas", params={"package": f"{name}#1.0.0"})
        assert listed.headers["x-total-count"] == "0", listed.text
    state, _ = await read_state(await repository_kv(nc.jetstream()))
    assert state.package("good.pkg#1.0.0") is not None
    assert all(state.package(f"{n}#1.0.0") is None for n in bad)  # nothing registered
    ingested = {p["name"] for p in (await api.get("/ig/status")).json()["packages"]}
    assert "good.pkg" in ingested and not ingested & set(bad)


async def test_a_dependency_cycle_ends(api: httpx.AsyncClient, registries: tuple[Registry, Registry]) -> None:
    primary, _ = registries
    primary.add("cycle.a", "1.0.0", pkg("cycle.a", dependencies={"cycle.b": "1.0.0"}))
    primary.add("cycle.b", "1.0.0", pkg("cycle.b", dependencies={"cycle.a": "1.0.0"}))
    job = await process(api, {"packages": ["cycle.a"]}, timeout=30)
    assert job["state"] == "succeeded", job
    assert sorted((p["name"], p["version"], p["state"]) for p in job["packages"]) == [
        ("cycle.a", "1.0.0", "succeeded"), ("cycle.b", "1.0.0", "succeeded"),
    ]  # fmt: skip
    assert by_name(job)["cycle.b"]["dependency_of"] == "cycle.a#1.0.0"
