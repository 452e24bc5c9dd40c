"""Validator replicas over the repository (the default mode), on real NATS, S3 and Redis with the
real storage service: packages come from the tarballs storage registered, uploads from storage,
and a replica gives no verdict before it holds what it needs."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client
from storage_service.app import Storage
from validator_service.bootstrap import ValidatorSettings, bootstrap

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    IndexPackage,
    PutSchema,
    RemovePackage,
    ValidateOptions,
    ValidateRequest,
    ValidateResult,
)
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.servers import RunningServer, free_port
from fhirschema_bus.settings import NatsSettings, PackageSettings
from fhirschema_bus.storage import StorageClient, nats_request
from fhirschema_bus.worker import Worker, WorkerSettings
from tests.conftest import PACKAGES
from tests.services.fakes import profile_requiring
from tests.services.test_storage_service import start_storage

pytestmark = pytest.mark.servers
CORE = "hl7.fhir.r4.core#4.0.1"
BAD_PATIENT = {"resourceType": "Patient", "gender": "banana", "birthDate": "not-a-date"}


@pytest.fixture
async def storage(
    nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer, nc: Client
) -> AsyncIterator[Storage]:
    st = await start_storage(nats_server, s3_server, redis_server)
    client = StorageClient(nats_request(nc))
    state, _ = await read_state(await repository_kv(nc.jetstream()))
    for stored in state.packages:  # every test starts from an empty repository
        await client.remove_package(RemovePackage(package=stored.package))
    yield st
    await st.app.stop()


async def register(storage: Storage, nc: Client, spec: str) -> None:
    data = (PACKAGES / f"{spec}.tgz").read_bytes()
    ref = await storage.store.aput_bytes(storage.store.settings.bucket_packages, f"test/{spec}.tgz", data)
    await StorageClient(nats_request(nc)).index_package(IndexPackage(package=spec, object=ref), timeout=60)


def replica(
    nats_url: str, storage: Storage | None, name: str = "", http_port: int = 0, cache_dir: str = ""
) -> Worker:
    """A replica in repository mode; `storage` None: one that cannot read S3 at all."""
    return bootstrap(
        settings=ValidatorSettings(cache_dir=cache_dir),
        nats=NatsSettings(url=nats_url),
        worker_settings=WorkerSettings(
            instance=name or f"repo-{uuid.uuid4().hex[:6]}", heartbeat_seconds=1, http_port=http_port
        ),
        packages=PackageSettings(packages=CORE),
        objects=ObjectStore(storage.store.settings) if storage else NoS3(),  # type: ignore[arg-type]
    )


class NoS3:
    async def aget_bytes(self, bucket: str, key: str) -> bytes:
        raise ConnectionError("this replica cannot reach S3")


@contextlib.asynccontextmanager
async def started(*workers: Worker) -> AsyncIterator[list[asyncio.Task[None]]]:
    """The workers' start-ups as tasks: a replica that is not ready does not finish starting."""
    tasks = [asyncio.create_task(w.app.start()) for w in workers]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for w in workers:
            await w.app.stop()


async def until(check: Any, timeout: float = 60.0, every: float = 0.05) -> float:
    """Poll `check()` (sync or async) until true; the seconds it took."""
    t0 = time.monotonic()
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"not within {timeout}s"
        await asyncio.sleep(every)


def http(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


async def test_no_verdict_before_the_core_package_is_loaded(
    storage: Storage, nc: Client, nats_server: RunningServer
) -> None:
    port = free_port()
    worker = replica(nats_server.url, storage, http_port=port)
    async with started(worker) as (start,):
        await until(lambda: worker.readiness.reason.startswith("not in the repository"))
        status, body = await asyncio.to_thread(http, f"http://127.0.0.1:{port}/ready")
        assert status == 503 and body["missing"] == [CORE] and not body["ready"]
        assert (await asyncio.to_thread(http, f"http://127.0.0.1:{port}/health"))[0] == 200
        beat = orjson.loads(
            (await (await nc.jetstream().key_value(s.KV_SERVICES)).get(worker.heartbeat_key)).value
        )
        assert beat["detail"]["ready"] is False and beat["detail"]["missing"] == [CORE]
        # A request that arrives now waits in JetStream: no replica answers it with a guess.
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        req = ValidateRequest(job_id=uuid.uuid4().hex, resource=BAD_PATIENT, reply_to=inbox)
        await nc.jetstream().publish(s.VALIDATE_ONE, req.model_dump_json().encode())
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=2)
        assert not start.done()
        await register(storage, nc, CORE)
        result = ValidateResult.model_validate_json((await sub.next_msg(timeout=60)).data)
        assert not result.valid and result.error is None
        errors = [i["diagnostics"] for i in result.outcome["issue"] if i["severity"] == "error"]
        assert any("banana" in e for e in errors) and any("not-a-date" in e for e in errors)
        await asyncio.wait_for(start, 30)
        assert (await asyncio.to_thread(http, f"http://127.0.0.1:{port}/ready"))[0] == 200
        # The core package removed: the replica stops taking work at once.
        await StorageClient(nats_request(nc)).remove_package(RemovePackage(package=CORE))
        await until(lambda: not worker.readiness.ready, timeout=20)
        assert (await asyncio.to_thread(http, f"http://127.0.0.1:{port}/ready"))[0] == 503


PROFILE = "http://example.org/fhir/StructureDefinition/needs-something"


async def test_an_upload_and_its_replacement_reach_every_replica(
    storage: Storage, nc: Client, nats_server: RunningServer
) -> None:
    await register(storage, nc, CORE)
    a, b = replica(nats_server.url, storage, "upload-a"), replica(nats_server.url, storage, "upload-b")
    client = StorageClient(nats_request(nc))
    only_gender = {"resourceType": "Patient", "gender": "female"}

    def verdict(w: Worker) -> bool:
        v = w.state["contexts"].validator([], [PROFILE], ValidateOptions())
        return v.validate(only_gender, [PROFILE]).valid

    async with started(a, b) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert not verdict(a)  # the requested profile is unknown: an error, not "valid"
        record = await client.upsert(PutSchema(schema_=profile_requiring(PROFILE, "birthDate")))
        await until(lambda: a.state["sync"].revision >= 0 and not verdict(a) and not verdict(b))
        t0 = time.monotonic()
        await client.upsert(PutSchema(schema_=profile_requiring(PROFILE, "gender"), id=record.id))
        await until(lambda: verdict(a) and verdict(b), timeout=30)
        took = time.monotonic() - t0
        print(f"\nreplacement enforced on both replicas after {took:.3f}s")
        # And through the bus: the answer of whichever replica takes the message.
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        req = ValidateRequest(job_id=uuid.uuid4().hex, resource={"resourceType": "Patient"}, reply_to=inbox,
                              profiles=[PROFILE])  # fmt: skip
        await nc.jetstream().publish(s.VALIDATE_ONE, req.model_dump_json().encode())
        result = ValidateResult.model_validate_json((await sub.next_msg(timeout=30)).data)
        assert not result.valid and any("gender" in i["diagnostics"] for i in result.outcome["issue"])
        await client.delete(record.id)
        await until(lambda: not verdict(a) and not verdict(b), timeout=30)


async def test_a_named_package_context_and_an_unknown_one(
    storage: Storage, nc: Client, nats_server: RunningServer
) -> None:
    await register(storage, nc, CORE)
    worker = replica(nats_server.url, storage)
    async with started(worker) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

        async def ask(packages: list[str]) -> ValidateResult:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, max_msgs=1)
            req = ValidateRequest(
                job_id=uuid.uuid4().hex, resource=BAD_PATIENT, reply_to=inbox, packages=packages
            )
            await nc.jetstream().publish(s.VALIDATE_ONE, req.model_dump_json().encode())
            return ValidateResult.model_validate_json((await sub.next_msg(timeout=30)).data)

        unknown = await ask(["hl7.fhir.us.core#3.1.1"])
        assert unknown.error and "not in the repository" in unknown.error
        assert unknown.outcome["issue"][0]["code"] == "not-found"
        await register(storage, nc, "hl7.fhir.us.core#3.1.1")
        await until(lambda: "hl7.fhir.us.core#3.1.1" in worker.state["contexts"].materialised.packages)
        named = await ask(["hl7.fhir.us.core#3.1.1"])
        assert named.error is None and not named.valid


async def test_a_restarted_replica_reads_its_packages_from_its_cache(
    storage: Storage, nc: Client, nats_server: RunningServer, tmp_path: Path
) -> None:
    """The first start unpacks the tarball into the cache (after ready); a restart that cannot
    reach S3 is ready from the cache alone, with the engine's verdict."""
    await register(storage, nc, CORE)
    cache = tmp_path / "cache"
    first = replica(nats_server.url, storage, cache_dir=str(cache))
    async with started(first) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await until(lambda: any(p.name.isalnum() for p in cache.glob("*")), timeout=60)
    again = replica(nats_server.url, None, cache_dir=str(cache))
    async with started(again) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        v = again.state["contexts"].validator([], [], ValidateOptions())
        result = v.validate(BAD_PATIENT)
        errors = " ".join(i.message for i in result.errors())
        assert not result.valid and "banana" in errors and "not-a-date" in errors
    # And without it (an empty cache, no S3): not ready, never a verdict.
    cold = replica(nats_server.url, None, cache_dir=str(tmp_path / "empty"))
    async with started(cold) as (start,):
        await until(lambda: "could not be loaded" in cold.readiness.reason, timeout=30)
        assert not cold.readiness.ready and not start.done()
