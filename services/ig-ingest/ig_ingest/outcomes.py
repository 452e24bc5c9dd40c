"""What follows a finished ingest job (service layer): its metrics, the failure notice, for a
scheduled run its `last_success`, and after every job that succeeded (scheduled, POST
/ig/process, start-up) the retention pass; plus the INGEST_RETENTION handler."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from fhirschema_bus import metrics
from fhirschema_bus.contracts import IngestJob, IngestRequest, JobState, RetentionReport, RetentionRequest
from ig_ingest.retention import Retention, pinned_versions
from ig_ingest.schedule import SCHEDULED, ScheduleStore

log = logging.getLogger("ig_ingest")


async def after_job(
    state: dict[str, Any], req: IngestRequest, job: IngestJob, since: datetime, seconds: float
) -> None:
    if job.finished is not None and job.finished < since:
        return  # a redelivery of a job finished before: counted and notified then
    scheduled = req.job_id.startswith(SCHEDULED)
    metrics.INGEST_JOB_SECONDS.labels("true" if scheduled else "false").observe(seconds)
    if (notifier := state.get("notifier")) is not None:
        try:
            await notifier.job_finished(job, scheduled)
        except Exception:  # the bus is down: the job's record still says what failed
            log.exception("job %s: the failure notice was not published", job.job)
    ok = job.state is JobState.SUCCEEDED
    if scheduled:
        metrics.INGEST_SCHEDULED_RUNS.labels("succeeded" if ok else "failed").inc()
        if ok:
            metrics.INGEST_SCHEDULE_LAST_SUCCESS.set(time.time())
            if (scheduler := state.get("scheduler")) is not None:
                with contextlib.suppress(Exception):
                    await scheduler.succeeded(job.job)
    retention: Retention | None = state.get("retention")
    if not ok or retention is None or retention.keep <= 0:
        return  # a failed job removes nothing: what it did not replace stays
    # Pinned besides the schedule's and FHIRSCHEMA_PACKAGES' exact versions: those this job
    # asked for by exact version (an older version asked for is not removed the moment it lands).
    pins = await schedule_pins(state) | (set() if scheduled else pinned_versions(req.packages))
    try:
        report = await retention.run(RetentionRequest(), pins)
    except Exception:  # storage or NATS down: the job stands, the next job or run retries
        log.exception("retention after %s", job.job)
        return
    if report.removed or report.errors:
        log.info("retention after %s: removed %s; errors %s", job.job, report.removed, report.errors)


async def schedule_pins(state: dict[str, Any]) -> set[str]:
    store: ScheduleStore | None = state.get("schedule")
    sched = await store.get() if store is not None else None
    return pinned_versions(sched.packages) if sched is not None else set()


async def handle_retention(state: dict[str, Any], body: bytes) -> RetentionReport:
    try:
        req = RetentionRequest.model_validate_json(body or b"{}")
    except ValidationError as e:
        return RetentionReport(
            keep=0, dry_run=True, errors=[f"not a RetentionRequest: {e.errors()[0]['msg']}"]
        )
    retention: Retention = state["retention"]
    return await retention.run(req, await schedule_pins(state))
