"""The JetStream topology (streams, durable pull consumers, KV buckets), created idempotently.

Every service calls `ensure_topology` at start-up; running it twice, or from several replicas at
once, leaves one identical set of streams and consumers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from fhirschema_bus import subjects as s
from fhirschema_bus.settings import NatsSettings

DAY = 24 * 3600.0

STREAMS = [
    StreamConfig(
        name=s.STREAM_REQUESTS,
        subjects=[
            f"{s.PREFIX}.validate.>",
            f"{s.PREFIX}.convert.>",
            f"{s.PREFIX}.ingest.>",
            s.STORAGE_PUT_SCHEMA,
            s.STORAGE_PUT_SCHEMAS,
        ],
        retention=RetentionPolicy.WORK_QUEUE,  # a request is consumed once, by one replica
        storage=StorageType.FILE,
        duplicate_window=120.0,  # Nats-Msg-Id de-duplication window
        max_msg_size=1024 * 1024,
    ),
    StreamConfig(
        name=s.STREAM_RESULTS,
        subjects=[f"{s.PREFIX}.result.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * DAY,
        duplicate_window=600.0,  # a redelivered item's result is stored once
    ),
    StreamConfig(
        name=s.STREAM_EVENTS,
        subjects=[f"{s.JOB_EVENTS}.>", f"{s.PREFIX}.events.ingest.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=DAY,
        max_msgs_per_subject=1000,
        discard=DiscardPolicy.OLD,
    ),
    StreamConfig(
        name=s.STREAM_DEAD_LETTERS,
        subjects=[f"{s.DEAD_LETTER}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * DAY,
    ),
]


@dataclass(frozen=True)
class Durable:
    name: str
    subject: str


DURABLES = [
    Durable(s.DURABLE_VALIDATOR_ONE, s.VALIDATE_ONE),
    Durable(s.DURABLE_VALIDATOR_BATCH, s.VALIDATE_BATCH_ITEM),
    Durable(s.DURABLE_CONVERTER, f"{s.PREFIX}.convert.>"),
    Durable(s.DURABLE_INGEST, s.INGEST_PACKAGE),
    Durable(s.DURABLE_STORAGE, s.STORAGE_PUT_SCHEMA),
    Durable(s.DURABLE_STORAGE_BATCH, s.STORAGE_PUT_SCHEMAS),
]

KV_BUCKETS = [
    KeyValueConfig(bucket=s.KV_JOBS, history=1, ttl=7 * DAY, storage=StorageType.FILE),
    KeyValueConfig(bucket=s.KV_IDEMPOTENCY, history=1, ttl=7 * DAY, storage=StorageType.FILE),
    KeyValueConfig(bucket=s.KV_SERVICES, history=1, ttl=60.0, storage=StorageType.MEMORY),
    # The repository state: one key, never expires (history for whoever investigates a change).
    KeyValueConfig(bucket=s.KV_REPOSITORY, history=10, storage=StorageType.FILE),
    KeyValueConfig(bucket=s.KV_INGEST, history=1, storage=StorageType.FILE),
]


def consumer_config(durable: Durable, settings: NatsSettings) -> ConsumerConfig:
    backoff = settings.backoff_seconds[: max(settings.max_deliver - 1, 0)] or None
    return ConsumerConfig(
        durable_name=durable.name,
        filter_subject=durable.subject,
        ack_policy=AckPolicy.EXPLICIT,
        max_deliver=settings.max_deliver,
        ack_wait=settings.ack_wait_seconds,
        backoff=backoff,
        max_ack_pending=1000,
    )


async def ensure_topology(js: JetStreamContext, settings: NatsSettings | None = None) -> None:
    """Streams and buckets at once, then the durables (each in its stream): each call is a round
    trip to the server, and a service makes all of them before it is ready."""
    settings = settings or NatsSettings()
    await asyncio.gather(*(_stream(js, c) for c in STREAMS), *(_bucket(js, kv) for kv in KV_BUCKETS))
    await asyncio.gather(*(_durable(js, d, settings) for d in DURABLES))


async def _stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)  # exists with other settings: converge


async def _durable(js: JetStreamContext, durable: Durable, settings: NatsSettings) -> None:
    stream = await js.find_stream_name_by_subject(durable.subject.replace(">", "x"))
    try:
        await js.consumer_info(stream, durable.name)
    except NotFoundError:
        try:
            await js.add_consumer(stream, consumer_config(durable, settings))
        except BadRequestError:
            pass  # another replica created it between the two calls


async def _bucket(js: JetStreamContext, kv: KeyValueConfig) -> None:
    try:
        await js.key_value(kv.bucket)
    except (BucketNotFoundError, NotFoundError):
        await js.create_key_value(kv)
