"""The schema index survives Redis losing it (issue 13), on real NATS, S3 and Valkey: a flushed or
restarted Redis is detected by the index generation, the index is rebuilt from S3 before anything
is answered from it, storage is not ready meanwhile, and replicas agree afterwards."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY
from storage_service import index as index_module
from storage_service.app import Storage, bootstrap
from storage_service.index import SchemaIndex

from fhirschema_bus.contracts import PutSchema, SchemaQuery, SchemaRecord
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.servers import RunningServer, free_port, start_redis
from fhirschema_bus.settings import NatsSettings, RedisSettings, StorageSettings
from fhirschema_bus.storage import StorageClient, StorageFailed, nats_request
from fhirschema_bus.worker import WorkerSettings
from tests.services.test_object_store import settings_for

pytestmark = pytest.mark.servers
FAST = StorageSettings(index_check_seconds=0.2, index_wait_seconds=8.0, rebuild_claim_seconds=30.0)
N = 40


def schema(url: str) -> dict[str, Any]:
    return {"url": url, "version": "1", "type": "Patient", "kind": "resource", "elements": {}}


def rebuilds(reason: str) -> float:
    return REGISTRY.get_sample_value("fhirschema_storage_index_rebuilds_total", {"reason": reason}) or 0.0


async def start(
    nats_srv: RunningServer, s3_srv: RunningServer, redis_url: str, bucket: str, http_port: int = 0
) -> Storage:
    base = settings_for(s3_srv)
    s3 = base.model_copy(
        update={f"bucket_{k}": f"{bucket}-{k}" for k in ("schemas", "packages", "results", "payloads")}
    )
    store = ObjectStore(s3, attempts=2, wait_min=0.05, wait_max=0.1, timeout=1.0)
    st = bootstrap(
        NatsSettings(url=nats_srv.url), s3, RedisSettings(url=redis_url), store=store,
        index=SchemaIndex.from_url(redis_url, FAST), settings=FAST,
        worker_settings=WorkerSettings(instance=f"st-{uuid.uuid4().hex[:6]}", http_port=http_port),
    )  # fmt: skip
    await st.app.start()  # its subscriptions known to the server when it returns (worker.py)
    return st


@pytest.fixture
def db(redis_server: RunningServer) -> str:
    """A Redis database of its own (the module's Valkey is shared by the tests)."""
    return redis_server.url.rsplit("/", 1)[0] + f"/{1 + uuid.uuid4().int % 14}"


@pytest.fixture
async def filled(
    nats_server: RunningServer, s3_server: RunningServer, db: str, nc: Client
) -> AsyncIterator[tuple[Storage, StorageClient, str]]:
    """One storage on its own buckets and Redis database, N uploads of one package stored."""
    flush = SchemaIndex.from_url(db)
    await flush.redis.flushdb()  # type: ignore[union-attr]
    bucket = uuid.uuid4().hex[:8]
    st = await start(nats_server, s3_server, db, bucket)
    client = StorageClient(nats_request(nc))
    package = f"idx.{bucket}#1.0.0"
    try:  # a failed fill must not leave a replica answering the next tests (half their writes)
        for i in range(N):
            await client.upsert(PutSchema(schema_=schema(f"http://x.org/{bucket}/{i}"), package=package))
        yield st, client, package
    finally:
        await st.app.stop()


async def redis_flush(st: Storage) -> None:
    await st.index.redis.flushdb()  # type: ignore[union-attr]


async def test_a_request_right_after_redis_lost_the_index_gets_the_rebuilt_one(
    filled: tuple[Storage, StorageClient, str],
) -> None:
    st, client, package = filled
    before = rebuilds("redis-lost")
    await redis_flush(st)
    # No wait for the periodic check: the request itself sees the generation missing.
    listed = await client.list(SchemaQuery(package=package, limit=1000))
    assert listed.total == N
    url = listed.items[0].url
    assert (await client.get_schema(SchemaQuery(url=url))).record.url == url
    assert rebuilds("redis-lost") == before + 1
    # Redis holds the whole index again, under a new generation.
    raw = await st.index.redis.hgetall(index_module.RECORDS)  # type: ignore[union-attr]
    assert len(raw) == N
    assert (await st.index.redis.get(index_module.GENERATION)).decode() == st.index.generation  # type: ignore[union-attr]


async def test_an_emptied_redis_with_a_new_write_is_still_rebuilt(
    filled: tuple[Storage, StorageClient, str],
) -> None:
    """Redis restarted, and another replica wrote one record before anyone read: Redis is not
    empty, yet incomplete; the missing generation tells."""
    st, client, package = filled
    one = next(iter(st.index.records.values()))
    await redis_flush(st)
    await st.index.redis.hset(index_module.RECORDS, one.id, one.model_dump_json())  # type: ignore[union-attr]
    listed = await client.list(SchemaQuery(package=package, limit=1000))
    assert listed.total == N


def ready(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


@pytest.mark.slow
async def test_not_ready_while_rebuilding_and_requests_wait_bounded(
    nats_server: RunningServer, s3_server: RunningServer, db: str, nc: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    flush = SchemaIndex.from_url(db)
    await flush.redis.flushdb()  # type: ignore[union-attr]
    port = free_port()
    st = await start(nats_server, s3_server, db, uuid.uuid4().hex[:8], http_port=port)
    try:
        client = StorageClient(nats_request(nc))
        rec = await client.upsert(PutSchema(schema_=schema(f"http://x.org/slow/{uuid.uuid4().hex}")))
        assert (await asyncio.to_thread(ready, port))[0] == 200
        release = asyncio.Event()
        records_in_s3 = st.repo.records_in_s3

        async def slow() -> list[SchemaRecord]:
            await release.wait()
            return await records_in_s3()

        monkeypatch.setattr(st.index, "_source", slow)
        monkeypatch.setattr(st.index.settings, "index_wait_seconds", 1.0)
        await redis_flush(st)
        for _ in range(50):  # the periodic check finds it without any request
            status, body = await asyncio.to_thread(ready, port)
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503 and "rebuilding the schema index" in body["reason"], body
        assert body["missing"] == ["schema index"]
        with pytest.raises(StorageFailed) as waiting:  # waits its bound, then says why: no empty answer
            await client.get_schema(SchemaQuery(id=rec.id))
        assert waiting.value.status == 503 and "rebuilt from S3" in waiting.value.message
        release.set()
        for _ in range(50):
            if (await asyncio.to_thread(ready, port))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await asyncio.to_thread(ready, port))[0] == 200
        assert (await client.get_schema(SchemaQuery(id=rec.id))).record.id == rec.id
    finally:
        await st.app.stop()


@pytest.mark.slow
async def test_two_replicas_one_rebuild_and_a_write_during_it_is_kept(
    nats_server: RunningServer, s3_server: RunningServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flush = SchemaIndex.from_url(db)
    await flush.redis.flushdb()  # type: ignore[union-attr]
    bucket = uuid.uuid4().hex[:8]
    a = await start(nats_server, s3_server, db, bucket)
    b = await start(nats_server, s3_server, db, bucket)
    try:
        for i in range(N):
            await a.repo.upsert(PutSchema(schema_=schema(f"http://x.org/two/{i}"), package="two#1"))
        release = asyncio.Event()
        listed = asyncio.Event()
        records_in_s3 = a.repo.records_in_s3

        async def slow() -> list[SchemaRecord]:  # lists S3, then dawdles: a write lands after it
            found = await records_in_s3()
            listed.set()
            await release.wait()
            return found

        monkeypatch.setattr(a.index, "_source", slow)
        monkeypatch.setattr(b.index, "_source", slow)
        await redis_flush(a)
        await asyncio.wait_for(listed.wait(), 10)
        write = asyncio.create_task(
            b.repo.upsert(PutSchema(schema_=schema("http://x.org/two/late"), package="two#1"))
        )
        await asyncio.sleep(0.5)
        release.set()
        await asyncio.wait_for(write, 30)
        for st in (a, b):
            _, total = await st.repo.list(SchemaQuery(package="two#1", limit=1000))
            assert total == N + 1
        assert a.index.generation == b.index.generation is not None
    finally:
        await a.app.stop()
        await b.app.stop()


@pytest.mark.slow
async def test_redis_down_at_start_then_back(
    nats_server: RunningServer, s3_server: RunningServer, nc: Client, tmp_path: Path
) -> None:
    """Started without Redis: the index comes from S3 into memory; once Redis answers it is
    written there (a replica that starts later adopts it)."""
    own = start_redis(tmp_path)
    bucket = uuid.uuid4().hex[:8]
    st = await start(nats_server, s3_server, own.url, bucket)
    await st.repo.upsert(PutSchema(schema_=schema("http://x.org/down/1"), package="down#1"))
    await st.app.stop()
    own.kill()
    st = await start(nats_server, s3_server, own.url, bucket)
    try:
        assert (await st.repo.list(SchemaQuery(package="down#1")))[1] == 1  # from S3, in memory
        assert st.index.dirty and st.index.generation is None
        own.restart()
        for _ in range(100):
            if not st.index.dirty:
                break
            await asyncio.sleep(0.1)
        assert not st.index.dirty and st.index.generation is not None
        later = SchemaIndex.from_url(own.url, FAST)
        await later.start(st.repo.records_in_s3)
        assert (await later.get(next(iter(st.index.records)))) is not None
        assert later.generation == st.index.generation  # adopted, not rebuilt
        await later.close()
    finally:
        await st.app.stop()
        own.stop()
