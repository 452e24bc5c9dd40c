"""Wiring for the validator service: settings → adapters → service → FastStream subscribers.

Replicas bind to the shared durables DURABLE_VALIDATOR_ONE / DURABLE_VALIDATOR_BATCH, so
JetStream splits the work between them. Nothing connects before `Worker.app` starts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, PullSub
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from fhirschema import engine_build
from fhirschema.context import FhirContext
from fhirschema.invariants import Invariants
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import ValidateChunk, ValidateOptions, ValidateRequest
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.results import NatsResults
from fhirschema_bus.settings import NatsSettings, RedisSettings, S3Settings
from fhirschema_bus.worker import Worker, WorkerSettings

from .schema_source import RedisCached, RemoteSchemaSource, SourceUnavailable, StorageClient
from .service import ValidationService, ValidatorPool

log = logging.getLogger("fhirschema.validator")
SERVICE = "validator"


class ValidatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_VALIDATOR_")

    packages: str = ""  # comma-separated package paths: local mode, no storage service needed
    lru_size: int = 32  # compiled validators kept per process
    storage_timeout_seconds: float = 5.0
    cache_prefix: str = "fhirschema:"  # Redis keys: <prefix><schema|resource>:<url>

    def package_list(self) -> list[str]:
        return [p.strip() for p in self.packages.split(",") if p.strip()]


@functools.lru_cache(maxsize=4)
def local_context(packages: tuple[str, ...]) -> FhirContext:
    # One per process: several in-process replicas (tests) share the parsed packages.
    return FhirContext.from_specs(list(packages))


def bootstrap(
    *,
    settings: ValidatorSettings | None = None,
    nats: NatsSettings | None = None,
    worker_settings: WorkerSettings | None = None,
    redis: RedisSettings | None = None,
) -> Worker:
    settings = settings or ValidatorSettings()
    worker = Worker(SERVICE, nats=nats, settings=worker_settings)
    executor = ThreadPoolExecutor(worker.settings.threads, thread_name_prefix="validate")
    state = worker.state

    async def wire() -> None:
        loop = asyncio.get_running_loop()
        if packages := settings.package_list():
            source: Any = await loop.run_in_executor(executor, local_context, tuple(packages))
            transient: tuple[type[BaseException], ...] = ()
        else:
            from redis.asyncio import Redis

            rs = redis or RedisSettings()
            state["redis"] = client = Redis.from_url(rs.url)
            fetcher = RedisCached(
                StorageClient(worker.connection, settings.storage_timeout_seconds),
                client,
                rs.schema_ttl_seconds,
                prefix=settings.cache_prefix,
            )
            source = RemoteSchemaSource(fetcher, loop, timeout=settings.storage_timeout_seconds * 2)
            transient = (SourceUnavailable,)
        terminology = Terminology(source.resource)

        def make_validator(options: ValidateOptions) -> Validator:
            invariants = Invariants() if options.invariants else None
            return Validator(source, invariants=invariants, terminology=terminology, strict=options.strict)

        service = ValidationService(
            ValidatorPool(make_validator, settings.lru_size),
            NatsResults(worker.connection, worker.js),
            await JobStore.open(worker.js),
            executor,
            payloads=_object_store(),
            instance=worker.instance,
            transient=transient,
        )
        state["service"] = service
        engine = "compiled" if engine_build.compiled() else "python"
        if engine == "python":
            log.warning("the validator engine runs as Python source (about 3x slower): build it with "
                        "`make engine`, or use the validator image, which compiles it")  # fmt: skip
        worker.details = lambda: {
            "handled": service.handled, "skipped": service.skipped, "validators": len(service.validators),
            "engine": engine,
        }  # fmt: skip

    async def close() -> None:
        if (client := state.get("redis")) is not None:
            await client.aclose()
        executor.shutdown(wait=False, cancel_futures=True)

    worker.on_startup(wire)
    worker.on_shutdown(close)
    register_subscribers(worker, state)
    return worker


def register_subscribers(worker: Worker, state: dict[str, Any]) -> None:
    stream = JStream(s.STREAM_REQUESTS, declare=False)  # ensure_topology owns the streams
    # Several messages per pull request (one round trip), handled by a pool of workers.
    pull = PullSub(batch_size=worker.settings.fetch_batch, timeout=1.0)
    # Batch messages are mostly chunks of up to 128 items: pulling many at once would let one
    # replica take a whole job while the others idle.
    batch_pull = PullSub(batch_size=worker.settings.chunk_fetch, timeout=1.0)
    workers = worker.settings.max_workers

    @worker.broker.subscriber(
        s.VALIDATE_ONE, stream=stream, durable=s.DURABLE_VALIDATOR_ONE, pull_sub=pull,
        max_workers=workers, ack_policy=AckPolicy.MANUAL, title="validate-one",
        description="Validate one resource; the result goes to reply_to and the RESULTS stream.",
    )  # fmt: skip
    async def validate_one(req: ValidateRequest) -> None:
        await state["service"].handle(req)

    @worker.broker.subscriber(
        s.VALIDATE_BATCH_ITEM, stream=stream, durable=s.DURABLE_VALIDATOR_BATCH, pull_sub=batch_pull,
        max_workers=worker.settings.chunk_workers, ack_policy=AckPolicy.MANUAL, title="validate-batch-item",
        description=(
            "Validate one item of a batch job (ValidateRequest) or a chunk of items (ValidateChunk); "
            "each result is stored once (a chunk's results as ValidateResultChunk messages) and "
            "counted once."
        ),
    )  # fmt: skip
    async def validate_batch_item(req: ValidateRequest | ValidateChunk) -> None:
        if isinstance(req, ValidateChunk):
            await state["service"].handle_chunk(req)
        else:
            await state["service"].handle(req)


def _object_store() -> ObjectStore | None:
    try:
        return ObjectStore(S3Settings())
    except ValidationError:
        log.warning("no S3 credentials (FHIRSCHEMA_S3_*): requests by resource_ref will fail")
        return None
