"""ig-ingest on real servers: packages from a directory and from a local registry land in storage."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from ig_ingest.app import bootstrap
from ig_ingest.bus import MAX_CHUNK_BYTES, chunk_bodies
from nats.aio.client import Client
from storage_service.app import Storage

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import IngestJob, IngestRequest, JobState, JobStatus, PutSchema, PutSchemas
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import IngestSettings, NatsSettings, PackageSettings
from fhirschema_bus.worker import Worker, WorkerSettings
from tests.conftest import PACKAGES
from tests.services.registry_server import make_package, profile, serve_registry
from tests.services.test_storage_service import ask

SMALL = "hl7.fhir.us.core#3.1.1"


@pytest.fixture
def pkg_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pkgs"
    d.mkdir()
    shutil.copy(PACKAGES / f"{SMALL}.tgz", d)
    return d


def test_schemas_travel_in_chunks_under_the_message_limit() -> None:
    """A package's schemas in PutSchemas messages of at most MAX_CHUNK_BYTES each, cut the same
    way every time (their Nats-Msg-Ids repeat on a rerun), nothing lost or reordered."""
    big = {"elements": {f"e{i}": {"short": "x" * 200} for i in range(400)}}  # ~90 KB each
    puts = [
        PutSchema(schema_={"url": f"http://x/{i}", **big}, package="p#1", origin="package") for i in range(30)
    ]
    bodies = chunk_bodies(puts)
    assert len(bodies) > 1 and all(len(b) <= MAX_CHUNK_BYTES for b in bodies)
    decoded = [PutSchemas.model_validate_json(b) for b in bodies]
    assert [p.schema_["url"] for d in decoded for p in d.puts] == [p.schema_["url"] for p in puts]
    assert decoded[0].puts[0] == puts[0] and chunk_bodies(puts) == bodies


def test_registry_server_mimics_protocol(pkg_dir: Path) -> None:
    with serve_registry(pkg_dir) as reg:
        meta = httpx.get(f"{reg.base}/hl7.fhir.us.core").json()
        assert meta["dist-tags"]["latest"] == "3.1.1"
        assert meta["versions"]["3.1.1"]["dist"]["tarball"] == f"{reg.base}/hl7.fhir.us.core/3.1.1"
        assert httpx.get(f"{reg.base}/hl7.fhir.us.core/").status_code == 200
        assert httpx.get(f"{reg.base}/nope").status_code == 404
        assert httpx.get(f"{reg.base}/hl7.fhir.us.core/9.9.9").status_code == 404
        npm = httpx.get(f"{reg.base}/hl7.fhir.us.core/-/hl7.fhir.us.core-3.1.1.tgz")
        assert npm.content[:2] == b"\x1f\x8b"


async def run_ingest(
    storage: Storage, nats_server: RunningServer, sources: str, startup: str = "",
    ingest: IngestSettings | None = None,
) -> Worker:  # fmt: skip
    w = bootstrap(
        nats=NatsSettings(url=nats_server.url),
        s3=storage.store.settings,
        packages=PackageSettings(package_sources=sources, packages=startup),
        ingest=ingest,
        worker_settings=WorkerSettings(heartbeat_seconds=60),
        store=ObjectStore(storage.store.settings),
    )
    await w.app.start()
    return w


M = TypeVar("M", JobStatus, IngestJob)


async def final_record(nc: Client, bucket: str, key: str, model: type[M], timeout: float) -> M:
    """The KV record once its state is final (absent or unparseable meanwhile: waited for)."""
    kv = await nc.jetstream().key_value(bucket)
    for _ in range(int(timeout * 10)):
        try:
            job = model.model_validate_json((await kv.get(key)).value or b"")
            if job.state.final:
                return job
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{bucket} {key} did not finish")


async def wait_job(nc: Client, job_id: str, timeout: float = 60.0) -> JobStatus:
    return await final_record(nc, s.KV_JOBS, job_id, JobStatus, timeout)


async def wait_schemas(nc: Client, package: str, n: int, timeout: float = 30.0) -> dict:
    for _ in range(int(timeout * 10)):
        listed = await ask(nc, s.STORAGE_LIST, {"package": package, "limit": 1000})
        if listed["total"] >= n:
            return listed
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {listed['total']} schemas of {package} stored")


async def ingest_job(nc: Client, job_id: str, timeout: float = 60.0) -> IngestJob:
    return await final_record(nc, s.KV_INGEST, f"job.{job_id}", IngestJob, timeout)


async def test_ingest_from_directory_at_startup(
    storage: Storage, nats_server: RunningServer, nc: Client, pkg_dir: Path
) -> None:
    w = await run_ingest(storage, nats_server, str(pkg_dir), startup=SMALL)
    try:
        for _ in range(100):
            jobs = await w.state["status"].jobs()
            if jobs:
                break
            await asyncio.sleep(0.1)
        job = await ingest_job(nc, jobs[0].job)
        assert job.state is JobState.SUCCEEDED, job
        names = {f"{p.name}#{p.version}": p for p in job.packages}
        assert names[SMALL].schemas > 0 and names[SMALL].source == str(pkg_dir)
        listed = await wait_schemas(nc, SMALL, names[SMALL].schemas)
        assert all(i["package"] == SMALL for i in listed["items"])
        patient = await ask(
            nc,
            s.STORAGE_GET_SCHEMA,
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"},
        )
        assert patient["schema"]["type"] == "Patient" and patient["record"]["origin"] == "package"
        state, _ = await read_state(await repository_kv(nc.jetstream()))
        registered = state.package(SMALL)
        assert registered is not None and registered.source == str(pkg_dir)
        assert registered.sha256 == hashlib.sha256((PACKAGES / f"{SMALL}.tgz").read_bytes()).hexdigest()
        # the same request again: nothing downloaded twice into the repository, all skipped
        again = IngestRequest(job_id=uuid.uuid4().hex, packages=[SMALL], dependencies=False)
        await nc.jetstream().publish(s.INGEST_PACKAGE, again.model_dump_json().encode())
        rerun = await ingest_job(nc, again.job_id)
        assert rerun.state is JobState.SUCCEEDED and rerun.packages[0].skipped
    finally:
        await w.app.stop()


async def test_ingest_request_from_registry(
    storage: Storage, nats_server: RunningServer, nc: Client, pkg_dir: Path
) -> None:
    with serve_registry(pkg_dir) as reg:
        w = await run_ingest(storage, nats_server, reg.base)
        try:
            js = nc.jetstream()
            job_id = uuid.uuid4().hex
            req = IngestRequest(
                job_id=job_id, packages=["hl7.fhir.us.core", "no.such#1.0.0"], dependencies=True
            )
            await js.publish(s.INGEST_PACKAGE, req.model_dump_json().encode())
            job = await ingest_job(nc, job_id)
            by = {p.requested: p for p in job.packages}
            core = by["hl7.fhir.us.core"]
            assert core.version == "3.1.1" and core.state == "succeeded", job
            # its dependency (R4 core) is in no registry here: named, and US Core still ingests
            assert not core.skipped  # this storage is new: the module's NATS remembering SMALL is not enough
            assert core.missing_dependencies, job
            assert by["no.such#1.0.0"].state == "failed" and "no.such" in (by["no.such#1.0.0"].error or "")
            assert job.state is JobState.FAILED  # one package of the request failed: said so
            assert any(p.endswith("/hl7.fhir.us.core/3.1.1") for p in reg.requests)
            await wait_schemas(nc, SMALL, core.schemas)
        finally:
            await w.app.stop()


async def test_package_without_profiles_and_progress_counts(
    storage: Storage, nats_server: RunningServer, nc: Client, pkg_dir: Path
) -> None:
    """A package holding no StructureDefinition finishes (0 of 0), its job too; a package's
    `total` is its StructureDefinitions and `schemas` reaches it."""
    vs = {
        "resourceType": "ValueSet",
        "id": "v",
        "url": "http://example.org/fhir/ValueSet/v",
        "status": "active",
    }
    with serve_registry(pkg_dir) as reg:
        reg.add("example.terms", "1.0.0", make_package("example.terms", "1.0.0", resources=[vs]))
        reg.add("example.profiles", "2.0.0", make_package(
            "example.profiles", "2.0.0", dependencies={"example.terms": "1.0.0"},
            resources=[profile("p1"), profile("p2")],
        ))  # fmt: skip
        w = await run_ingest(storage, nats_server, reg.base)
        try:
            req = IngestRequest(job_id=uuid.uuid4().hex, packages=["example.profiles"])
            await nc.jetstream().publish(s.INGEST_PACKAGE, req.model_dump_json().encode())
            job = await ingest_job(nc, req.job_id, timeout=30)
            assert job.state is JobState.SUCCEEDED, job
            by = {p.name: p for p in job.packages}
            assert (by["example.terms"].state, by["example.terms"].total, by["example.terms"].schemas) == (
                "succeeded", 0, 0,
            ), job  # fmt: skip
            assert (by["example.profiles"].total, by["example.profiles"].schemas) == (2, 2), job
            assert by["example.terms"].dependency_of == "example.profiles#2.0.0"
            state, _ = await read_state(await repository_kv(nc.jetstream()))
            assert state.package("example.terms#1.0.0") is not None  # registered: validators load it
        finally:
            await w.app.stop()
