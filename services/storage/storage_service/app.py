"""Wiring: bootstrap() builds the adapters, the service layer and the storage worker.

Storage runs on the shared `Worker` (heartbeat, metrics, one ack / retry / dead-letter policy for
its JetStream subjects). Nothing connects at import time; the broker connects, the topology and
buckets are ensured and the index is loaded in the worker's start-up hook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import ConsumerConfig, DeliverPolicy

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobEvent, PutSchema, PutSchemas
from fhirschema_bus.credentials import redis_options
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.probes import Readiness
from fhirschema_bus.settings import NatsSettings, RedisSettings, S3Settings, StorageSettings
from fhirschema_bus.worker import PermanentError, Worker, WorkerSettings
from storage_service.handlers import StorageHandlers
from storage_service.index import SchemaIndex
from storage_service.repository import SchemaRepository, StorageError
from storage_service.results import ResultAssembler
from storage_service.state import KvState, StateStore

log = logging.getLogger("storage")
SERVICE = "storage"
DURABLE_RESULTS = s.DURABLE_STORAGE_RESULTS  # events consumer shared by storage replicas


@dataclass
class Storage:
    worker: Worker
    repo: SchemaRepository
    handlers: StorageHandlers
    store: ObjectStore
    index: SchemaIndex
    assembler: ResultAssembler | None = field(default=None)

    @property
    def app(self) -> FastStream:
        return self.worker.app

    @property
    def broker(self) -> NatsBroker:
        return self.worker.broker


def bootstrap(
    nats: NatsSettings | None = None,
    s3: S3Settings | None = None,
    redis: RedisSettings | None = None,
    store: ObjectStore | None = None,
    index: SchemaIndex | None = None,
    worker_settings: WorkerSettings | None = None,
    state: StateStore | None = None,
    settings: StorageSettings | None = None,
) -> Storage:
    s3 = s3 or S3Settings()  # type: ignore[call-arg]  # credentials come from the environment
    redis = redis or RedisSettings()
    store = store or ObjectStore(s3)
    index = index or SchemaIndex.from_url(redis.url, settings or StorageSettings(), **redis_options(redis))
    worker = Worker(SERVICE, nats=nats, settings=worker_settings)

    async def index_readiness(reason: str | None) -> None:
        # Not ready while the index is rebuilt from S3: lookups would wait (or get a 503).
        await worker.set_readiness(
            Readiness(reason is None, reason or "", [] if reason is None else ["schema index"])
        )

    index.listener = index_readiness
    repo = SchemaRepository(store, index, state or KvState(lambda: worker.js), s3)
    h = StorageHandlers(repo)
    st = Storage(worker, repo, h, store, index)

    async def setup() -> None:
        st.assembler = ResultAssembler(worker.js, store, s3.bucket_results)
        for attempt in range(30):  # S3 may come up after us: keep trying, but say why
            try:
                await repo.start()
                break
            except StorageError as e:
                log.warning("storage start-up (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(1.0)
        else:
            raise RuntimeError("storage: S3 never became available")
        if not worker.readiness.ready:  # started with Redis' index: no rebuild said so
            await index_readiness(None)
        worker.details = lambda: {"schemas": len(index.records), "index_generation": index.generation}

    worker.on_startup(setup)
    worker.on_shutdown(index.close)
    register_subscribers(worker, st)
    return st


async def durably(put: Awaitable[Any]) -> None:
    """A durable put's failure, decided: a refused schema is dead-lettered with the reason
    (nothing is lost), S3 down is raised to be retried with backoff."""
    try:
        await put
    except StorageError as e:
        if e.status < 500:
            raise PermanentError(str(e)) from e
        raise


def register_subscribers(worker: Worker, st: Storage) -> None:
    broker, h = worker.broker, st.handlers

    # --- core request/reply: every reply a StorageReply envelope --------------------------------

    @broker.subscriber(s.STORAGE_GET_SCHEMA, queue="storage", title="storage.get")
    async def get_schema(msg: NatsMessage) -> bytes:
        return await h.get_schema(msg.body)

    @broker.subscriber(s.STORAGE_LIST, queue="storage", title="storage.list")
    async def list_schemas(msg: NatsMessage) -> bytes:
        return await h.list(msg.body)

    @broker.subscriber(s.STORAGE_DELETE, queue="storage", title="storage.delete")
    async def delete_schema(msg: NatsMessage) -> bytes:
        return await h.delete(msg.body)

    @broker.subscriber(s.STORAGE_UPSERT, queue="storage", title="storage.upsert")
    async def upsert_schema(msg: NatsMessage) -> bytes:
        return await h.upsert(msg.body)

    @broker.subscriber(s.STORAGE_INDEX_PACKAGE, queue="storage", title="storage.index")
    async def index_package(msg: NatsMessage) -> bytes:
        return await h.index_package(msg.body)

    @broker.subscriber(s.STORAGE_REMOVE_PACKAGE, queue="storage", title="storage.unindex")
    async def remove_package(msg: NatsMessage) -> bytes:
        return await h.remove_package(msg.body)

    # --- JetStream: durable puts (ingest, converter) and finished jobs --------------------------

    @broker.subscriber(
        s.STORAGE_PUT_SCHEMA, stream=JStream(s.STREAM_REQUESTS, declare=False), durable=s.DURABLE_STORAGE,
        pull_sub=PullSub(batch_size=16, timeout=1.0), ack_policy=AckPolicy.MANUAL, no_reply=True,
        title="storage-put", description="Store a FHIRSchema (PutSchema); a redelivery replaces it.",
    )  # fmt: skip
    async def put_schema(put: PutSchema) -> None:
        await durably(st.repo.upsert(put.model_copy(update={"replace": True})))

    @broker.subscriber(
        s.STORAGE_PUT_SCHEMAS, stream=JStream(s.STREAM_REQUESTS, declare=False), durable=s.DURABLE_STORAGE_BATCH,
        pull_sub=PullSub(batch_size=2, timeout=1.0), ack_policy=AckPolicy.MANUAL, no_reply=True,
        title="storage-puts", description="Store a chunk of FHIRSchemas (PutSchemas); a redelivery replaces them.",
    )  # fmt: skip
    async def put_schemas(chunk: PutSchemas) -> None:
        await durably(st.repo.upsert_many(chunk))  # always replaces: a redelivery must succeed

    @broker.subscriber(
        f"{s.JOB_EVENTS}.>", stream=JStream(s.STREAM_EVENTS, declare=False), durable=DURABLE_RESULTS,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_wait=120.0, max_deliver=5),
        pull_sub=PullSub(batch_size=32, timeout=1.0), ack_policy=AckPolicy.MANUAL, no_reply=True,
        title="storage-results", description="A finished job's results become one NDJSON object in S3.",
    )  # fmt: skip
    async def job_event(event: JobEvent) -> None:
        if event.state.final and st.assembler is not None:
            await st.assembler.assemble_when_s3_answers(event.job_id)  # fails: retried with backoff
