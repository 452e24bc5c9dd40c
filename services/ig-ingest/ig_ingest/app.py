"""Wiring: bootstrap() builds the ig-ingest worker (shared Worker bootstrap, durable DURABLE_INGEST).

At start-up the packages named in FHIRSCHEMA_PACKAGES are queued as IngestRequests (skipped when
already ingested), so replicas share them through the durable consumer like any other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsMessage, PullSub

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_MSG_ID, IngestRequest, JobKind
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.settings import NatsSettings, PackageSettings, S3Settings
from fhirschema_bus.worker import Worker, WorkerSettings
from ig_ingest.bus import NatsSink
from ig_ingest.ingest import Ingester, IngestError
from ig_ingest.sources import make_sources

log = logging.getLogger("ig_ingest")
SERVICE = "ig-ingest"


def bootstrap(
    *,
    nats: NatsSettings | None = None,
    s3: S3Settings | None = None,
    packages: PackageSettings | None = None,
    worker_settings: WorkerSettings | None = None,
    store: ObjectStore | None = None,
) -> Worker:
    packages = packages or PackageSettings()
    s3 = s3 or S3Settings()  # type: ignore[call-arg]  # credentials come from the environment
    worker = Worker(SERVICE, nats=nats, settings=worker_settings)
    state = worker.state
    store = store or ObjectStore(s3)

    async def wire() -> None:
        jobs = await JobStore.open(worker.js)
        sink = NatsSink(worker.connection, worker.js)
        state["jobs"] = jobs
        state["ingester"] = Ingester(
            make_sources, packages.source_list(), store, sink, jobs, s3.bucket_packages
        )
        state["startup"] = asyncio.create_task(queue_startup_packages())
        # The failures are how the gateway's /ready and `make up` tell why a package is missing.
        worker.details = lambda: {
            "packages": sorted(state.get("loaded", ())), "failed": dict(state.get("failed", {}))
        }  # fmt: skip
        state["beat"] = worker.beat

    async def queue_startup_packages() -> None:
        ingester: Ingester = state["ingester"]
        for spec in packages.package_list():
            try:
                if await ingester.already_done(spec):
                    state.setdefault("loaded", set()).add(spec)
                    log.info("%s already ingested, skipped", spec)
                    continue
            except Exception as e:  # S3 not there yet: queue it anyway, the handler retries
                log.warning("could not check %s: %s", spec, e)
            job_id = f"ingest-{uuid.uuid4().hex[:12]}"
            await state["jobs"].create(JobKind.INGEST, job_id=job_id, detail={"package": spec})
            hour = datetime.now(UTC).strftime("%Y%m%d%H")
            req = IngestRequest(job_id=job_id, package=spec)
            # Replicas starting together queue each package once (JetStream de-duplication).
            await worker.js.publish(
                s.INGEST_PACKAGE,
                req.model_dump_json().encode(),
                headers={HEADER_MSG_ID: f"startup-{spec}-{hour}"},
            )
            log.info("queued %s (job %s)", spec, job_id)

    async def close() -> None:
        if (task := state.get("startup")) is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    worker.on_startup(wire)
    worker.on_shutdown(close)
    register_subscribers(worker, state)
    return worker


def register_subscribers(worker: Worker, state: dict[str, Any]) -> None:
    @worker.broker.subscriber(
        s.INGEST_PACKAGE, stream=JStream(s.STREAM_REQUESTS, declare=False), durable=s.DURABLE_INGEST,
        pull_sub=PullSub(batch_size=1, timeout=1.0), ack_policy=AckPolicy.MANUAL, title="ingest-package",
        description="Load one package (name#version) from the configured sources into the repository.",
    )  # fmt: skip
    async def ingest_package(req: IngestRequest, msg: NatsMessage) -> None:
        await handle_ingest(state, req, msg)


async def handle_ingest(state: dict[str, Any], req: IngestRequest, msg: NatsMessage | None) -> None:
    ingester: Ingester = state["ingester"]
    jobs: JobStore = state["jobs"]
    if await jobs.get(req.job_id) is None:  # published straight to NATS, without the gateway
        await jobs.create(JobKind.INGEST, job_id=req.job_id, detail={"package": req.package})

    async def tick() -> None:  # a big package takes longer than ack_wait
        if msg is not None:
            with contextlib.suppress(Exception):
                await msg.raw_message.in_progress()

    loaded: set[str] = state.setdefault("loaded", set())  # shown by the gateway's GET /info
    if not req.sources and await ingester.already_done(req.package):
        await jobs.start(req.job_id, total=1)
        await jobs.record(req.job_id, 0, "valid")
        loaded.add(req.package)
        log.info("%s already ingested (job %s)", req.package, req.job_id)
        return
    failed: dict[str, str] = state.setdefault("failed", {})
    try:
        await ingester.ingest(req.job_id, req.package, req.sources or None, tick=tick)
        loaded.add(req.package)
        failed.pop(req.package, None)
    except IngestError as e:  # recorded as a failed job; retrying will not find it either
        log.error("job %s: %s", req.job_id, e)
        failed[req.package] = str(e)
    if "beat" in state:  # said at once, not at the next heartbeat
        with contextlib.suppress(Exception):
            await state["beat"]()
