"""Wiring: bootstrap() builds the ig-ingest worker (shared Worker bootstrap, durable DURABLE_INGEST).

At start-up the packages named in FHIRSCHEMA_PACKAGES are queued as one IngestRequest (with
their dependencies; what is stored already is skipped), de-duplicated across replicas starting
together, and go through the same pipeline as POST /ig/process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsMessage, PullSub

from fhirschema_bus import subjects as s
from fhirschema_bus import tasks
from fhirschema_bus.contracts import HEADER_MSG_ID, IngestJob, IngestRequest, RegistryQuery, now
from fhirschema_bus.ingest_status import IngestStatus
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.settings import IngestSettings, NatsSettings, PackageSettings, S3Settings
from fhirschema_bus.worker import Worker, WorkerSettings
from ig_ingest.bus import NatsSink
from ig_ingest.configured import http_limits, make_registries
from ig_ingest.discovery import Discovery
from ig_ingest.lease import Lease
from ig_ingest.notify import Notifier
from ig_ingest.outcomes import after_job, handle_retention
from ig_ingest.pipeline import Pipeline
from ig_ingest.resolver import Registries
from ig_ingest.retention import Retention, pinned_versions
from ig_ingest.schedule import ScheduleStore, handle_get, handle_put
from ig_ingest.scheduler import Scheduler
from ig_ingest.search import search

log = logging.getLogger("ig_ingest")
SERVICE = "ig-ingest"


def bootstrap(
    *,
    nats: NatsSettings | None = None,
    s3: S3Settings | None = None,
    packages: PackageSettings | None = None,
    ingest: IngestSettings | None = None,
    worker_settings: WorkerSettings | None = None,
    store: ObjectStore | None = None,
) -> Worker:
    packages = packages or PackageSettings()
    ingest = ingest or IngestSettings()
    s3 = s3 or S3Settings()  # type: ignore[call-arg]  # credentials come from the environment
    worker = Worker(SERVICE, nats=nats, settings=worker_settings)
    state = worker.state
    store = store or ObjectStore(s3)
    configured = make_registries(packages.source_list(), ingest)
    state["registries"] = configured

    def registries(req: IngestRequest) -> Registries:
        chosen = make_registries(req.sources, ingest) if req.sources else configured
        return chosen.only(req.registry) if req.registry else chosen

    async def wire() -> None:
        status = await IngestStatus.open(worker.js)
        state["status"] = status
        state["ack_wait"] = worker.nats.ack_wait_seconds
        state["schedule"] = ScheduleStore(status.kv)
        sink = NatsSink(worker.connection, worker.js)
        state["pipeline"] = Pipeline(
            registries, store, s3.bucket_packages, sink, status, concurrency=ingest.concurrency
        )
        state["startup"] = asyncio.create_task(queue_startup_packages())
        lease = Lease(status.kv, worker.instance, ttl=ingest.lease_seconds)
        discover = Discovery(configured, ingest.feeds_url, http_limits(ingest))
        scheduler = Scheduler(
            state["schedule"], lease, publish_request, discover, poll_seconds=ingest.schedule_poll_seconds
        )
        state["scheduler"] = scheduler
        state["scheduling"] = asyncio.create_task(scheduler.run_forever())
        pinned = pinned_versions(packages.package_list())
        state["retention"] = Retention(sink, store, status, ingest.keep_versions, pinned)
        token = ingest.webhook_token.get_secret_value() if ingest.webhook_token else None
        state["notifier"] = Notifier(publish_event, ingest.webhook_url, token, ingest.webhook_attempts)
        # The failures are how the gateway's /ready and `make up` tell why a package is missing.
        worker.details = lambda: {
            "packages": sorted(state.get("loaded", ())), "failed": dict(state.get("failed", {}))
        }  # fmt: skip
        state["beat"] = worker.beat

    async def publish_request(req: IngestRequest) -> None:
        # The message id is the job id: a request published twice (two leaders, a retry) is kept once.
        await worker.js.publish(
            s.INGEST_PACKAGE, req.model_dump_json().encode(), headers={HEADER_MSG_ID: req.job_id}
        )

    async def publish_event(subject: str, body: bytes, headers: dict[str, str]) -> None:
        await worker.js.publish(subject, body, headers=headers)

    async def queue_startup_packages() -> None:
        specs = packages.package_list()
        if not specs:
            return
        # The same id in every replica starting within these 10 minutes (hash() is per process).
        at = datetime.now(UTC)
        slot = at.strftime("%Y%m%d%H") + f"{at.minute // 10}"
        job_id = f"startup-{slot}-{hashlib.sha256(' '.join(specs).encode()).hexdigest()[:10]}"
        req = IngestRequest(job_id=job_id, packages=specs)
        # Replicas starting together queue it once (JetStream de-duplication).
        await worker.js.publish(
            s.INGEST_PACKAGE, req.model_dump_json().encode(), headers={HEADER_MSG_ID: job_id}
        )
        log.info("queued %s (job %s)", ", ".join(specs), job_id)

    async def close() -> None:
        if (notifier := state.get("notifier")) is not None:
            await notifier.aclose()
        # The scheduler releases its lease as it stops; re-cancelled: a task cancelled in a
        # NATS request may swallow it (tasks.py).
        await tasks.stop(state.get("startup"), state.get("scheduling"), timeout=3.0)

    worker.on_startup(wire)
    worker.on_shutdown(close)
    register_subscribers(worker, state)
    return worker


def register_subscribers(worker: Worker, state: dict[str, Any]) -> None:
    @worker.broker.subscriber(
        s.INGEST_PACKAGE, stream=JStream(s.STREAM_REQUESTS, declare=False), durable=s.DURABLE_INGEST,
        pull_sub=PullSub(batch_size=1, timeout=1.0), ack_policy=AckPolicy.MANUAL, title="ingest",
        description="Ingest packages (IngestRequest) and their dependencies into the repository.",
    )  # fmt: skip
    async def ingest_packages(req: IngestRequest, msg: NatsMessage) -> None:
        await handle_ingest(state, req, msg)

    @worker.broker.subscriber(
        s.INGEST_SCHEDULE_GET,
        queue=SERVICE,
        title="schedule-get",
        description="ScheduleGet -> ScheduleReply: the stored IG schedule, next_run, last_run, last_job.",
    )
    async def schedule_get(body: Any) -> bytes:
        return (await handle_get(state["schedule"])).model_dump_json().encode()

    @worker.broker.subscriber(
        s.INGEST_SCHEDULE_PUT,
        queue=SERVICE,
        title="schedule-put",
        description="IngestSchedule -> ScheduleReply: store the IG schedule (status 400 and why: bad cron).",
    )
    async def schedule_put(body: Any, msg: NatsMessage) -> bytes:
        # The raw body: a bad schedule is answered with why (400), not dropped by the decoder.
        return (await handle_put(state["schedule"], msg.raw_message.data)).model_dump_json().encode()

    @worker.broker.subscriber(
        s.INGEST_RETENTION, queue=SERVICE, title="retention",
        description="RetentionRequest -> RetentionReport: drop all but the newest N versions per package (dry_run lists them).",
    )  # fmt: skip
    async def retention(body: Any, msg: NatsMessage) -> bytes:
        return (await handle_retention(state, msg.raw_message.data)).model_dump_json().encode()

    @worker.broker.subscriber(s.INGEST_REGISTRY, queue=SERVICE, title="registry-search")
    async def registry_search(query: RegistryQuery) -> bytes:
        answer = await search(state["registries"], query)
        return answer.model_dump_json().encode()


async def handle_ingest(state: dict[str, Any], req: IngestRequest, msg: NatsMessage | None) -> IngestJob:
    pipeline: Pipeline = state["pipeline"]

    async def tick() -> None:  # a big closure takes longer than ack_wait
        if msg is not None:
            with contextlib.suppress(Exception):
                await msg.raw_message.in_progress()

    async def keep_alive() -> None:
        # Also while one download or conversion outlasts the ack wait: else JetStream gives the
        # job to another replica while this one still runs it.
        while True:
            await asyncio.sleep(state.get("ack_wait", 30.0) / 3)
            await tick()

    started, since = time.monotonic(), now()
    alive = asyncio.create_task(keep_alive())
    try:
        job = await pipeline.run(req, tick=tick)
    finally:
        alive.cancel()
    await after_job(state, req, job, since, time.monotonic() - started)
    loaded: set[str] = state.setdefault("loaded", set())  # shown by the gateway's GET /info
    failed: dict[str, str] = state.setdefault("failed", {})
    for p in job.packages:
        for spec in {p.requested, f"{p.name}#{p.version}"}:
            if p.state == "succeeded":
                loaded.add(spec)
                failed.pop(spec, None)
            elif p.state == "failed":
                failed[spec] = p.error or "failed"
    if "beat" in state:  # said at once, not at the next heartbeat
        with contextlib.suppress(Exception):
            await state["beat"]()
    log.info(
        "job %s %s: %s",
        job.job,
        job.state,
        ", ".join(f"{p.name}#{p.version} {p.state}" for p in job.packages),
    )
    return job
