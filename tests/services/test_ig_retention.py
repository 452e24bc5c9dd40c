"""Retention: the plan without servers; on real NATS, S3 (SeaweedFS) and storage, older versions
leave the repository state, storage's index, S3 and KV_INGEST, and `dry_run` only lists them;
also after an ingest job that was not scheduled (POST /ig/process), pinned versions kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from ig_ingest.app import bootstrap
from ig_ingest.retention import pinned_versions, plan
from nats.aio.client import Client
from storage_service.app import Storage

from fhirschema.ids import PackageId
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    IngestRequest,
    JobState,
    ObjectRef,
    RepositoryState,
    RetentionReport,
    StoredPackage,
)
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import IngestSettings, NatsSettings, PackageSettings
from fhirschema_bus.worker import Worker, WorkerSettings
from tests.services.registry_server import Registry, make_package, profile, serve_registry
from tests.services.test_ig_ingest import ingest_job, wait_schemas
from tests.services.test_storage_service import ask


def stored(spec: str, deps: dict[str, str] | None = None) -> StoredPackage:
    return StoredPackage(
        package=spec, object=ObjectRef(bucket="b", key=spec), sha256="0", dependencies=deps or {}
    )


def test_plan_keeps_newest_pinned_and_needed() -> None:
    state = RepositoryState(packages=[
        stored("a#1.0.0"), stored("a#1.1.0"), stored("a#2.0.0-ballot"), stored("a#2.0.0"),
        stored("b#1.0.0"), stored("b#3.0.0", {"c": "1.0.0"}), stored("c#1.0.0"), stored("c#2.0.0"),
        stored("d#0.1.0", {"b": "1.0.0"}),
    ])  # fmt: skip
    kept, removed = plan(state, 1, pinned={"a#1.0.0", "z#9.9.9"})
    # newest of each (2.0.0 above its ballot); a#1.0.0 pinned; c#1.0.0 needed by b#3.0.0, b#1.0.0 by d
    assert kept == ["a#1.0.0", "a#2.0.0", "b#1.0.0", "b#3.0.0", "c#1.0.0", "c#2.0.0", "d#0.1.0"]
    assert removed == ["a#1.1.0", "a#2.0.0-ballot"]
    assert plan(state, 0, set())[1] == []  # 0: keep everything
    assert pinned_versions(["a#1.0.0", "b", "c#1.2.x", "d#current", "e@2.0.0"]) == {"a#1.0.0", "e#2.0.0"}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with serve_registry() as reg:
        for v in ("1.0.0", "1.1.0", "2.0.0"):
            res = [profile(f"m{v.replace('.', '')}{i}") for i in range(2)]
            reg.add("example.multi", v, make_package("example.multi", v, resources=res))
        yield reg


async def keep_one(storage: Storage, nats_server: RunningServer, registry: Registry, packages: str) -> Worker:
    """ig-ingest keeping the newest version of each package, `packages` pinned (FHIRSCHEMA_PACKAGES)."""
    w: Worker = bootstrap(
        nats=NatsSettings(url=nats_server.url), s3=storage.store.settings,
        packages=PackageSettings(package_sources=registry.base, packages=packages),
        ingest=IngestSettings(keep_versions=1, ci_build_url=""),
        worker_settings=WorkerSettings(heartbeat_seconds=60), store=ObjectStore(storage.store.settings),
    )  # fmt: skip
    await w.app.start()
    return w


async def retention(nc: Client, **body: object) -> RetentionReport:
    req = {"dry_run": False, **body}
    reply = await nc.request(s.INGEST_RETENTION, orjson.dumps(req), timeout=30)
    return RetentionReport.model_validate_json(reply.data)


async def test_retention_on_real_storage(
    storage: Storage, nats_server: RunningServer, nc: Client, registry: Registry
) -> None:
    w = await keep_one(storage, nats_server, registry, packages="example.multi#1.0.0")
    try:
        req = IngestRequest(
            job_id=uuid.uuid4().hex, packages=[f"example.multi#{v}" for v in ("1.0.0", "1.1.0", "2.0.0")]
        )
        await nc.jetstream().publish(s.INGEST_PACKAGE, req.model_dump_json().encode())
        job = await ingest_job(nc, req.job_id)
        assert job.state is JobState.SUCCEEDED, job
        for v in ("1.0.0", "1.1.0", "2.0.0"):
            await wait_schemas(nc, f"example.multi#{v}", 2)
        s3 = ObjectStore(storage.store.settings)
        bucket = storage.store.settings.bucket_packages
        old = PackageId("example.multi", "1.1.0")
        assert s3.exists(bucket, old.tgz_key)

        dry = await retention(nc, dry_run=True)
        # keep 1: 2.0.0 newest, 1.0.0 pinned (FHIRSCHEMA_PACKAGES names it exactly): 1.1.0 would go
        assert dry.dry_run and dry.removed == ["example.multi#1.1.0"] and dry.schemas == 0, dry
        assert (await ask(nc, s.STORAGE_LIST, {"package": str(old), "limit": 10}))["total"] == 2  # untouched

        done = await retention(nc)
        assert done.removed == ["example.multi#1.1.0"] and done.schemas == 2 and not done.errors, done
        state, _ = await read_state(await repository_kv(nc.jetstream()))
        assert sorted(p.package for p in state.packages if p.package.startswith("example.multi")) == [
            "example.multi#1.0.0", "example.multi#2.0.0",
        ]  # fmt: skip
        assert (await ask(nc, s.STORAGE_LIST, {"package": str(old), "limit": 10}))["total"] == 0
        assert not s3.exists(bucket, old.tgz_key)
        assert s3.exists(bucket, PackageId("example.multi", "2.0.0").tgz_key)
        assert await w.state["status"].package(old) is None
        assert await w.state["status"].package(PackageId("example.multi", "2.0.0")) is not None
        assert (await retention(nc)).removed == []  # nothing more to do
    finally:
        await w.app.stop()


async def specs(nc: Client, name: str) -> list[str]:
    state, _ = await read_state(await repository_kv(nc.jetstream()))
    return sorted(p.package for p in state.packages if p.package.startswith(f"{name}#"))


async def test_retention_after_jobs_that_were_not_scheduled(
    storage: Storage, nats_server: RunningServer, nc: Client, registry: Registry
) -> None:
    w = await keep_one(storage, nats_server, registry, packages="")
    s3, bucket = ObjectStore(storage.store.settings), storage.store.settings.bucket_packages
    name = f"example.keep{uuid.uuid4().hex[:6]}"  # the module's other test stored example.multi
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        registry.add(
            name, v, make_package(name, v, resources=[profile(f"k{v.replace('.', '')}{i}") for i in range(2)])
        )
    try:
        # The schedule pins 1.0.0 (disabled: it never runs here, its exact versions still count).
        sched = {"cron": "0 4 * * *", "packages": [f"{name}#1.0.0"], "enabled": False}
        assert (
            orjson.loads((await nc.request(s.INGEST_SCHEDULE_PUT, orjson.dumps(sched), timeout=10)).data)[
                "status"
            ]
            == 200
        )

        async def job(version: str) -> None:
            req = IngestRequest(job_id=uuid.uuid4().hex, packages=[f"{name}#{version}"])
            await nc.jetstream().publish(s.INGEST_PACKAGE, req.model_dump_json().encode())
            assert (await ingest_job(nc, req.job_id)).state is JobState.SUCCEEDED

        async def until(expected: list[str]) -> None:
            for _ in range(100):  # retention runs right after the job's record says it is final
                if await specs(nc, name) == expected:
                    return
                await asyncio.sleep(0.1)
            assert await specs(nc, name) == expected

        await job("1.1.0")
        await job("2.0.0")  # newest: 1.1.0 (not pinned) goes, on real S3 and storage
        await until([f"{name}#2.0.0"])
        old = PackageId(name, "1.1.0")
        for _ in range(100):  # out of the state first, then its tarball and its ingest record
            if not s3.exists(bucket, old.tgz_key) and await w.state["status"].package(old) is None:
                break
            await asyncio.sleep(0.1)
        assert not s3.exists(bucket, old.tgz_key) and s3.exists(bucket, PackageId(name, "2.0.0").tgz_key)
        assert await w.state["status"].package(old) is None
        assert (await ask(nc, s.STORAGE_LIST, {"package": str(old), "limit": 1}))["total"] == 0
        await job("1.0.0")  # older than 2.0.0, but pinned by the schedule: kept
        await job("1.1.0")  # asked for by exact version: kept after its own job
        await until([f"{name}#1.0.0", f"{name}#1.1.0", f"{name}#2.0.0"])
        await wait_schemas(nc, f"{name}#1.1.0", 2)
        await job("2.0.0")  # already stored: skipped; now 1.1.0 is neither newest nor pinned
        await until([f"{name}#1.0.0", f"{name}#2.0.0"])
    finally:
        await nc.request(s.INGEST_SCHEDULE_PUT, orjson.dumps({"enabled": False}), timeout=10)
        await w.app.stop()
