"""Wiring for the converter service: one durable (DURABLE_CONVERTER) on fhirschema.convert.>."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, PullSub
from pydantic import ValidationError

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import ConvertRequest
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.results import NatsResults
from fhirschema_bus.settings import NatsSettings, S3Settings
from fhirschema_bus.worker import Worker, WorkerSettings

from .service import ConversionService

log = logging.getLogger("fhirschema.converter")
SERVICE = "converter"


def bootstrap(*, nats: NatsSettings | None = None, worker_settings: WorkerSettings | None = None) -> Worker:
    worker = Worker(SERVICE, nats=nats, settings=worker_settings)
    executor = ThreadPoolExecutor(worker.settings.threads, thread_name_prefix="convert")

    async def wire() -> None:
        service = ConversionService(
            NatsResults(worker.connection, worker.js),
            await JobStore.open(worker.js),
            executor,
            payloads=_object_store(),
        )
        worker.state["service"] = service
        worker.details = lambda: {"handled": service.handled}

    async def close() -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    worker.on_startup(wire)
    worker.on_shutdown(close)

    @worker.broker.subscriber(
        f"{s.PREFIX}.convert.>", stream=JStream(s.STREAM_REQUESTS, declare=False),
        durable=s.DURABLE_CONVERTER, pull_sub=PullSub(batch_size=worker.settings.fetch_batch, timeout=1.0),
        ack_policy=AckPolicy.MANUAL, title="convert",
        description="StructureDefinition → FHIRSchema (CONVERT_ONE and CONVERT_BATCH_ITEM).",
    )  # fmt: skip
    async def convert_item(req: ConvertRequest) -> None:
        await worker.state["service"].handle(req)

    return worker


def _object_store() -> ObjectStore | None:
    try:
        return ObjectStore(S3Settings())
    except ValidationError:
        log.warning("no S3 credentials (FHIRSCHEMA_S3_*): requests by structure_definition_ref will fail")
        return None
