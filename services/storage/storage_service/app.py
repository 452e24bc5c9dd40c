"""Wiring: bootstrap() builds the adapters, the service layer and the FastStream app.

Nothing connects at import time; the broker connects, the topology and buckets are ensured and
the index is loaded in the app's start-up hook.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import ConsumerConfig, DeliverPolicy

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobEvent
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.settings import NatsSettings, RedisSettings, S3Settings
from fhirschema_bus.topology import ensure_topology
from storage_service.handlers import StorageHandlers
from storage_service.index import SchemaIndex
from storage_service.repository import SchemaRepository, StorageError
from storage_service.results import ResultAssembler

log = logging.getLogger("storage")
DURABLE_RESULTS = "storage-results"  # events consumer shared by storage replicas


@dataclass
class Storage:
    app: FastStream
    broker: NatsBroker
    repo: SchemaRepository
    handlers: StorageHandlers
    store: ObjectStore
    index: SchemaIndex
    assembler: ResultAssembler | None = field(default=None)


def bootstrap(
    nats: NatsSettings | None = None,
    s3: S3Settings | None = None,
    redis: RedisSettings | None = None,
    store: ObjectStore | None = None,
    index: SchemaIndex | None = None,
) -> Storage:
    nats = nats or NatsSettings()
    s3 = s3 or S3Settings()  # type: ignore[call-arg]  # credentials come from the environment
    redis = redis or RedisSettings()
    store = store or ObjectStore(s3)
    index = index or SchemaIndex.from_url(redis.url, redis.schema_ttl_seconds)
    repo = SchemaRepository(store, index, s3)
    h = StorageHandlers(repo)
    broker = NatsBroker(nats.url, graceful_timeout=5.0, logger=log)
    app = FastStream(broker, logger=log)
    st = Storage(app, broker, repo, h, store, index)

    @app.on_startup
    async def setup() -> None:
        conn = await broker.connect()
        js = conn.jetstream()
        await ensure_topology(js, nats)
        st.assembler = ResultAssembler(js, store, s3.bucket_results)
        for attempt in range(30):  # S3 may come up after us: keep trying, but say why
            try:
                await repo.start()
                break
            except StorageError as e:
                log.warning("storage start-up (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(1.0)
        else:
            raise RuntimeError("storage: S3 never became available")

    # --- core request/reply -----------------------------------------------------------------

    @broker.subscriber(s.STORAGE_GET_SCHEMA, queue="storage", title="storage.get")
    async def get_schema(msg: NatsMessage) -> bytes | dict:
        return await h.get_schema(msg.body)

    @broker.subscriber(s.STORAGE_GET_RESOURCE, queue="storage", title="storage.resource")
    async def get_resource(msg: NatsMessage) -> dict:
        return await h.get_resource(msg.body)

    @broker.subscriber(s.STORAGE_LIST, queue="storage", title="storage.list")
    async def list_schemas(msg: NatsMessage) -> dict:
        return await h.list(msg.body)

    @broker.subscriber(s.STORAGE_DELETE, queue="storage", title="storage.delete")
    async def delete_schema(msg: NatsMessage) -> dict:
        return await h.delete(msg.body)

    @broker.subscriber(s.STORAGE_UPSERT, queue="storage", title="storage.upsert")
    async def upsert_schema(msg: NatsMessage) -> dict:
        return await h.upsert(msg.body)

    @broker.subscriber(s.STORAGE_INDEX_PACKAGE, queue="storage", title="storage.index")
    async def index_package(msg: NatsMessage) -> dict:
        return await h.index_package(msg.body)

    # --- JetStream: durable puts (ingest, converter) and finished jobs ----------------------

    @broker.subscriber(
        s.STORAGE_PUT_SCHEMA,
        stream=JStream(s.STREAM_REQUESTS, declare=False),
        durable=s.DURABLE_STORAGE,
        pull_sub=PullSub(batch_size=16, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
    )
    async def put_schema(msg: NatsMessage) -> None:
        reply = await h.upsert(msg.body)
        status = reply.get("status", 200)
        if status == 400:
            log.error("rejecting bad PutSchema: %s", reply["error"])
            await msg.reject()
        elif status >= 500:
            await msg.nack(delay=2.0)  # transient: redelivered, then dead-lettered after max_deliver
        else:
            await msg.ack()

    @broker.subscriber(
        f"{s.JOB_EVENTS}.>",
        stream=JStream(s.STREAM_EVENTS, declare=False),
        durable=DURABLE_RESULTS,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_wait=120.0, max_deliver=5),
        pull_sub=PullSub(batch_size=32, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
    )
    async def job_event(event: JobEvent, msg: NatsMessage) -> None:
        if not event.state.final or st.assembler is None:
            await msg.ack()
            return
        try:
            await st.assembler.assemble(event.job_id)
            await msg.ack()
        except Exception as e:
            log.warning("job %s: results not assembled yet: %s", event.job_id, e)
            await msg.nack(delay=5.0)

    return st
