"""The storage service on real NATS, S3 and Redis: request/reply, durable puts (one schema or a
chunk), resources, S3 down."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from storage_service import keys
from storage_service.app import Storage, bootstrap
from storage_service.index import SchemaIndex

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    DeadLetter,
    IndexPackage,
    JobEvent,
    JobKind,
    JobState,
    JobStatus,
    PutSchema,
    PutSchemas,
    RepositoryState,
    SchemaQuery,
)
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.servers import RunningServer, start_s3
from fhirschema_bus.settings import NatsSettings, RedisSettings
from tests.conftest import PACKAGES
from tests.services.test_object_store import settings_for

pytestmark = pytest.mark.servers


def schema(url: str, version: str, name: str, type_: str = "Patient") -> dict[str, Any]:
    return {"url": url, "version": version, "name": name, "type": type_, "kind": "resource", "elements": {}}


async def start_storage(nats_srv: RunningServer, s3_srv: RunningServer, redis_srv: RunningServer) -> Storage:
    redis_url = redis_srv.url.rsplit("/", 1)[0] + f"/{1 + uuid.uuid4().int % 14}"
    idx = SchemaIndex.from_url(redis_url)
    await idx.redis.flushdb()  # type: ignore[union-attr]
    s3 = settings_for(s3_srv, "st")
    store = ObjectStore(s3, attempts=2, wait_min=0.05, wait_max=0.1, timeout=1.0)
    st = bootstrap(NatsSettings(url=nats_srv.url), s3, RedisSettings(url=redis_url), store=store, index=idx)
    await st.app.start()
    return st


async def ask(nc: Client, subject: str, body: Any, timeout: float = 10.0) -> Any:
    """The reply's result, or its error (a StorageFault: status, message)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = json.loads((await nc.request(subject, data, timeout=timeout)).data)
    assert set(reply) in ({"result"}, {"error"}), reply  # always the StorageReply envelope
    return reply.get("result") or reply["error"]


async def test_upsert_get_list_delete(storage: Storage, nc: Client) -> None:
    url = f"http://example.org/StructureDefinition/p-{uuid.uuid4().hex[:6]}"
    put1 = PutSchema(schema_=schema(url, "1.0.0", "P"), package="ex.pkg#1.0.0").model_dump(by_alias=True)
    rec1 = await ask(nc, s.STORAGE_UPSERT, put1)
    assert rec1["id"] == keys.schema_id(url, "1.0.0", "ex.pkg#1.0.0")
    assert rec1["object"]["key"] == f"ex.pkg/1.0.0/{rec1['id']}.json"
    assert (await ask(nc, s.STORAGE_UPSERT, put1))["status"] == 409  # exists: replacing is explicit
    again = await ask(nc, s.STORAGE_UPSERT, {**put1, "replace": True})
    assert (again["id"], again["object"]) == (rec1["id"], rec1["object"])  # same id and key
    rec2 = await ask(
        nc, s.STORAGE_UPSERT, {"schema": schema(url, "2.0.0", "P", "Observation"), "package": "ex.pkg#2.0.0"}
    )
    upload = await ask(nc, s.STORAGE_UPSERT, {"schema": schema(url + "-up", "0.1", "Up")})
    assert upload["object"]["key"].startswith("_uploads/")

    assert (await ask(nc, s.STORAGE_GET_SCHEMA, {"url": url}))["schema"]["version"] == "2.0.0"  # latest
    got = await ask(nc, s.STORAGE_GET_SCHEMA, {"url": f"{url}|1.0.0"})
    assert got["schema"]["version"] == "1.0.0" and got["record"]["id"] == rec1["id"]
    assert (await ask(nc, s.STORAGE_GET_SCHEMA, {"id": rec1["id"]}))["schema"]["url"] == url
    missing = await ask(nc, s.STORAGE_GET_SCHEMA, {"url": "http://nope"})
    assert missing["status"] == 404 and "no schema" in missing["message"]
    assert (await ask(nc, s.STORAGE_GET_SCHEMA, b"{not json"))["status"] == 400

    listed = await ask(nc, s.STORAGE_LIST, {"url": url})
    assert listed["total"] == 2 and {i["version"] for i in listed["items"]} == {"1.0.0", "2.0.0"}
    assert (await ask(nc, s.STORAGE_LIST, {"type": "Observation"}))["items"][0]["id"] == rec2["id"]
    assert (await ask(nc, s.STORAGE_LIST, {"package": "ex.pkg"}))["total"] == 2
    page = await ask(nc, s.STORAGE_LIST, {"limit": 1, "offset": 1})
    assert page["total"] == 3 and len(page["items"]) == 1

    assert await ask(nc, s.STORAGE_DELETE, {"id": rec2["id"]}) == {"id": rec2["id"], "deleted": True}
    assert (await ask(nc, s.STORAGE_DELETE, {"id": rec2["id"]}))["deleted"] is False
    assert (await ask(nc, s.STORAGE_GET_SCHEMA, {"url": url}))["schema"]["version"] == "1.0.0"  # latest again


async def test_durable_put_and_restart_rebuilds_index(
    storage: Storage,
    nc: Client,
    nats_server: RunningServer,
    s3_server: RunningServer,
    redis_server: RunningServer,
) -> None:
    js = nc.jetstream()
    url = f"http://example.org/StructureDefinition/d-{uuid.uuid4().hex[:6]}"
    body = PutSchema(schema_=schema(url, "1", "D"), package="d.pkg#1").model_dump_json(by_alias=True)
    await js.publish(s.STORAGE_PUT_SCHEMA, body.encode(), headers={"Nats-Msg-Id": url})
    for _ in range(100):
        got = await ask(nc, s.STORAGE_GET_SCHEMA, {"url": url})
        if "record" in got:
            break
        await asyncio.sleep(0.1)
    assert got["schema"]["url"] == url and got["record"]["origin"] == "upload"
    # The S3 copy of the index survives Redis loss: a fresh storage on the same buckets finds it.
    await storage.index.redis.flushdb()  # type: ignore[union-attr]
    storage.index.records.clear()
    storage.index.urls.clear()
    await storage.repo.start()
    assert (await storage.repo.list(SchemaQuery(url=url)))[1] == 1


async def test_results_assembled_when_job_finishes(storage: Storage, nc: Client) -> None:
    js = nc.jetstream()
    job = uuid.uuid4().hex
    kv = await js.key_value(s.KV_JOBS)
    await kv.put(job, JobStatus(id=job, kind=JobKind.VALIDATE, total=5).model_dump_json().encode())

    def res(i: int) -> dict:
        return {"job_id": job, "index": i, "valid": True, "outcome": {"resourceType": "OperationOutcome"}}

    # out of order, duplicates, single results and ValidateResultChunks mixed
    for msg in (res(2), res(0), {"job_id": job, "results": [res(3), res(4)]}, res(1), res(0),
                {"job_id": job, "results": [res(4)]}):  # fmt: skip
        await js.publish(s.job_result_subject(s.VALIDATE_RESULT, job), json.dumps(msg).encode())
    ev = JobEvent(job_id=job, state=JobState.SUCCEEDED, total=5, done=5, valid=5)
    await js.publish(f"{s.JOB_EVENTS}.{job}", ev.model_dump_json().encode())
    for _ in range(100):
        status = JobStatus.model_validate_json((await kv.get(job)).value or b"")
        if status.results:
            break
        await asyncio.sleep(0.1)
    assert status.results is not None and status.results.key == f"{job}.ndjson"
    lines = list(storage.store.iter_lines(status.results.bucket, status.results.key))
    assert [json.loads(ln)["index"] for ln in lines] == [0, 1, 2, 3, 4]
    assert all(json.loads(ln)["job_id"] == job for ln in lines)


@pytest.mark.slow
async def test_keeps_serving_when_s3_is_down(
    nats_server: RunningServer, redis_server: RunningServer, nc: Client, tmp_path: Path
) -> None:
    own = start_s3(tmp_path)
    st = await start_storage(nats_server, own, redis_server)
    try:
        url = f"http://example.org/StructureDefinition/s3down-{uuid.uuid4().hex[:6]}"
        rec = await ask(nc, s.STORAGE_UPSERT, {"schema": schema(url, "1", "S"), "package": "down#1"})
        own.stop()
        down = await ask(nc, s.STORAGE_UPSERT, {"schema": schema(url + "x", "1", "X"), "package": "down#1"})
        assert down["status"] == 503 and "unavailable" in down["message"]
        # the index and listings still answer; a schema's body is in S3: a clear error, not a hang
        assert (await ask(nc, s.STORAGE_LIST, {"package": "down#1"}))["total"] == 1
        gone = await ask(nc, s.STORAGE_GET_SCHEMA, {"id": rec["id"]})
        assert gone["status"] == 503
    finally:
        await st.app.stop()
        own.stop()


async def repository_state(nc: Client) -> tuple[RepositoryState, int]:
    return await read_state(await repository_kv(nc.jetstream()))


async def test_packages_and_uploads_change_the_repository_state(storage: Storage, nc: Client) -> None:
    data = (PACKAGES / "hl7.fhir.us.core#3.1.1.tgz").read_bytes()
    bucket = storage.store.settings.bucket_packages
    ref = storage.store.put_bytes(bucket, "state-test/us-core.tgz", data)
    before, kv_revision = await repository_state(nc)
    digest = hashlib.sha256(data).hexdigest()
    req = IndexPackage(package="hl7.fhir.us.core#3.1.1", object=ref, sha256=digest, source="test")
    indexed = await ask(nc, s.STORAGE_INDEX_PACKAGE, req.model_dump())
    state, after = await repository_state(nc)
    assert after > kv_revision and state.revision == before.revision + 1 == indexed["revision"]
    stored = state.package("hl7.fhir.us.core#3.1.1")
    assert stored is not None and stored.sha256 == digest and stored.source == "test"
    assert stored.fhir_versions == ["4.0.1"] and stored.dependencies == {"hl7.fhir.r4.core": "4.0.1"}
    # Indexed again (ig-ingest retried): the same tarball changes nothing.
    await ask(nc, s.STORAGE_INDEX_PACKAGE, req.model_dump())
    assert (await repository_state(nc))[0].revision == state.revision
    wrong = await ask(nc, s.STORAGE_INDEX_PACKAGE, {**req.model_dump(), "sha256": "0" * 64})
    assert wrong["status"] == 400 and "sha256" in wrong["message"]

    # Uploads bump `uploads`; package content (origin "package") does not.
    url = f"http://example.org/StructureDefinition/st-{uuid.uuid4().hex[:6]}"
    await ask(nc, s.STORAGE_UPSERT, {"schema": schema(url, "1", "S"), "origin": "package", "package": "x#1"})
    assert (await repository_state(nc))[0].uploads == state.uploads
    upload = await ask(nc, s.STORAGE_UPSERT, {"schema": schema(url + "-u", "1", "U")})
    uploaded = (await repository_state(nc))[0]
    assert uploaded.uploads == state.uploads + 1 and uploaded.revision == state.revision + 1
    await ask(nc, s.STORAGE_DELETE, {"id": upload["id"]})
    assert (await repository_state(nc))[0].uploads == state.uploads + 2

    removed = await ask(nc, s.STORAGE_REMOVE_PACKAGE, {"package": "hl7.fhir.us.core#3.1.1"})
    assert removed["removed"] is True
    assert (await repository_state(nc))[0].package("hl7.fhir.us.core#3.1.1") is None
    again = await ask(nc, s.STORAGE_REMOVE_PACKAGE, {"package": "hl7.fhir.us.core#3.1.1"})
    assert again["removed"] is False and again["schemas"] == 0


async def test_a_bad_durable_put_is_dead_lettered_not_lost(storage: Storage, nc: Client) -> None:
    js = nc.jetstream()
    body = b'{"schema": {"name": "no url"}}'
    await js.publish(s.STORAGE_PUT_SCHEMA, body, headers={"Nats-Msg-Id": uuid.uuid4().hex})
    sub = await js.pull_subscribe(f"{s.DEAD_LETTER}.{s.STORAGE_PUT_SCHEMA}", stream=s.STREAM_DEAD_LETTERS)
    try:
        (msg,) = await sub.fetch(1, timeout=20)
    finally:
        await sub.unsubscribe()
    letter = DeadLetter.model_validate_json(msg.data)
    assert letter.service == "storage" and "url" in letter.error
    assert base64.b64decode(letter.payload) == body


async def until_total(nc: Client, query: dict[str, Any], total: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while (listed := await ask(nc, s.STORAGE_LIST, query))["total"] != total:
        assert asyncio.get_running_loop().time() < deadline, (listed["total"], total)
        await asyncio.sleep(0.05)
    return listed


async def test_chunked_puts_are_stored_once_and_counted_per_package(storage: Storage, nc: Client) -> None:
    js = nc.jetstream()
    tag = uuid.uuid4().hex[:6]
    package, base = f"chunk.{tag}#1.0.0", f"http://example.org/StructureDefinition/c-{tag}"

    def put(i: int, version: str = "1.0.0") -> PutSchema:
        return PutSchema(schema_=schema(f"{base}-{i}", version, f"C{i}"), package=package, origin="package")

    first = PutSchemas(puts=[put(i) for i in range(40)]).model_dump_json(by_alias=True).encode()
    for _ in range(2):  # published twice with one id: the stream keeps it once
        await js.publish(s.STORAGE_PUT_SCHEMAS, first, headers={"Nats-Msg-Id": f"chunk-{tag}-0"})
    # Another chunk repeats ten of them (replaced, not counted twice) and adds a version 2.0.0 of
    # one url after its 1.0.0 in the same chunk: that url resolves to 2.0.0.
    second = PutSchemas(puts=[*(put(i) for i in range(30, 40)), put(50), put(50, "2.0.0")])
    await js.publish(s.STORAGE_PUT_SCHEMAS, second.model_dump_json(by_alias=True).encode(),
                     headers={"Nats-Msg-Id": f"chunk-{tag}-1"})  # fmt: skip
    query = {"package": package, "origin": "package", "limit": 1}
    await until_total(nc, query, 42)
    page = await ask(nc, s.STORAGE_LIST, {"package": package, "limit": 10, "offset": 5})
    ids = sorted(keys.schema_id(f"{base}-{i}", "1.0.0", package) for i in (*range(40), 50))
    ids = sorted([*ids, keys.schema_id(f"{base}-50", "2.0.0", package)])
    assert page["total"] == 42 and [r["id"] for r in page["items"]] == ids[5:15]
    assert (await ask(nc, s.STORAGE_LIST, {"package": package, "origin": "upload"}))["total"] == 0
    assert (await ask(nc, s.STORAGE_GET_SCHEMA, {"url": f"{base}-50"}))["schema"]["version"] == "2.0.0"
    assert (await ask(nc, s.STORAGE_GET_SCHEMA, {"url": f"{base}-7"}))["record"]["package"] == package
    # Deleting one record counts down; the count survives Redis losing the index (rebuilt from S3).
    assert (await ask(nc, s.STORAGE_DELETE, {"id": ids[0]}))["deleted"] is True
    await until_total(nc, query, 41)
    await storage.index.redis.flushdb()  # type: ignore[union-attr]
    assert (await ask(nc, s.STORAGE_LIST, query))["total"] == 41
    assert (await storage.repo.list(SchemaQuery(package=package)))[1] == 41  # the full scan agrees


async def test_a_chunk_with_a_bad_put_stores_the_others_and_is_dead_lettered(
    storage: Storage, nc: Client
) -> None:
    js = nc.jetstream()
    tag = uuid.uuid4().hex[:6]
    package = f"bad.{tag}#1.0.0"
    good = [PutSchema(schema_=schema(f"http://example.org/b-{tag}-{i}", "1", "B"), package=package, origin="package")
            for i in range(2)]  # fmt: skip
    body = PutSchemas(puts=[*good, PutSchema(schema_={"name": "no url"}, package=package)]).model_dump_json(
        by_alias=True
    )
    sub = await js.pull_subscribe(f"{s.DEAD_LETTER}.{s.STORAGE_PUT_SCHEMAS}", stream=s.STREAM_DEAD_LETTERS)
    try:
        await js.publish(s.STORAGE_PUT_SCHEMAS, body.encode(), headers={"Nats-Msg-Id": uuid.uuid4().hex})
        (msg,) = await sub.fetch(1, timeout=20)
    finally:
        await sub.unsubscribe()
    letter = DeadLetter.model_validate_json(msg.data)
    assert (
        letter.service == "storage" and "1 of 3 schemas not stored" in letter.error and "url" in letter.error
    )
    await until_total(nc, {"package": package, "limit": 1}, 2)
