"""Job status in the JetStream KV bucket `KV_JOBS`, with events on `JOB_EVENTS.<job_id>`.

Many replicas update one job at the same time, so every change is a read-modify-write guarded by
the KV revision (optimistic concurrency, retried on conflict). An item is counted once even when
its message is redelivered: `record` first creates the marker "<job>.<index>" in `KV_IDEMPOTENCY`
(`create` fails if the key exists) and only the winner updates the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobEvent, JobKind, JobState, JobStatus, Outcome, now

MAX_CONFLICT_RETRIES = 200  # two replicas x a few hundred items in flight on one key


class JobNotFound(KeyError):
    pass


class JobStore:
    def __init__(self, js: JetStreamContext, jobs: KeyValue, done: KeyValue) -> None:
        self._js = js
        self._jobs = jobs
        self._done = done

    @classmethod
    async def open(cls, js: JetStreamContext) -> JobStore:
        """The buckets must exist (ensure_topology)."""
        return cls(js, await js.key_value(s.KV_JOBS), await js.key_value(s.KV_IDEMPOTENCY))

    # -- queries -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobStatus | None:
        try:
            entry = await self._jobs.get(job_id)
        except KeyNotFoundError:
            return None
        return JobStatus.model_validate_json(entry.value) if entry.value else None

    async def list_recent(self, limit: int = 50) -> list[JobStatus]:
        try:
            keys = await self._jobs.keys()
        except NoKeysError:
            return []
        jobs = [j for j in await asyncio.gather(*(self.get(k) for k in keys)) if j is not None]
        jobs.sort(key=lambda j: j.created, reverse=True)
        return jobs[:limit]

    # -- transitions -------------------------------------------------------------------------

    async def create(
        self,
        kind: JobKind,
        total: int = 0,
        *,
        job_id: str | None = None,
        detail: dict | None = None,
    ) -> JobStatus:
        job = JobStatus(id=job_id or uuid.uuid4().hex, kind=kind, total=total, detail=detail or {})
        await self._jobs.create(job.id, job.model_dump_json().encode())
        await self._publish(job)
        return job

    async def start(self, job_id: str, total: int | None = None) -> JobStatus:
        def change(job: JobStatus) -> bool:
            if job.state.final:
                return False
            if total is not None:
                job.total = total
            job.state = JobState.RUNNING
            _finish_if_done(job)
            return True

        return await self._update(job_id, change)

    async def cancel(self, job_id: str) -> JobStatus:
        return await self._finish(job_id, JobState.CANCELLED, None)

    async def fail(self, job_id: str, error: str) -> JobStatus:
        return await self._finish(job_id, JobState.FAILED, error)

    async def record(self, job_id: str, index: int, outcome: Outcome) -> JobStatus | None:
        """Count one item's outcome exactly once; None when already counted or no such job."""
        marker = f"{job_id}.{index}"
        try:
            await self._done.create(marker, outcome.encode())
        except KeyWrongLastSequenceError:
            return None  # a redelivery: the first delivery counted it

        def change(job: JobStatus) -> bool:
            if job.state in (JobState.CANCELLED, JobState.FAILED):
                return False  # late items of a stopped job are not counted
            setattr(job, outcome, getattr(job, outcome) + 1)
            job.done += 1
            if job.state is JobState.QUEUED:
                job.state = JobState.RUNNING
            _finish_if_done(job)
            return True

        try:
            return await self._update(job_id, change, progress=True)
        except JobNotFound:
            return None  # e.g. a single POST /validate that no job tracks
        except BaseException:
            # The counts were not updated: drop the marker so that the redelivery counts the item.
            with contextlib.suppress(Exception):
                await self._done.delete(marker)
            raise

    # -- internals ---------------------------------------------------------------------------

    async def _finish(self, job_id: str, state: JobState, error: str | None) -> JobStatus:
        def change(job: JobStatus) -> bool:
            if job.state.final:
                return False
            job.state, job.error, job.finished = state, error, now()
            return True

        return await self._update(job_id, change)

    async def _update(
        self, job_id: str, change: Callable[[JobStatus], bool], *, progress: bool = False
    ) -> JobStatus:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                entry = await self._jobs.get(job_id)
            except KeyNotFoundError:
                raise JobNotFound(job_id) from None
            if not entry.value:
                raise JobNotFound(job_id)
            job = JobStatus.model_validate_json(entry.value)
            before = job.state
            if not change(job):
                return job
            job.updated = now()
            try:
                await self._jobs.update(job_id, job.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                # Another replica won the race: back off a little (jitter spreads the retries).
                await asyncio.sleep(random.uniform(0, 0.005))
                continue
            if job.state is not before or not progress or _progress_tick(job):
                await self._publish(job)
            return job
        raise RuntimeError(f"job {job_id}: too many concurrent updates")

    async def _publish(self, job: JobStatus) -> None:
        event = JobEvent(
            job_id=job.id, state=job.state, total=job.total, done=job.done,
            valid=job.valid, invalid=job.invalid, failed=job.failed,
        )  # fmt: skip
        await self._js.publish(s.job_result_subject(s.JOB_EVENTS, job.id), event.model_dump_json().encode())


def _finish_if_done(job: JobStatus) -> None:
    if job.total and job.done >= job.total and not job.state.final:
        job.state, job.finished = JobState.SUCCEEDED, now()


def _progress_tick(job: JobStatus) -> bool:
    # Progress events about every 1% of a job: a WebSocket needs a moving bar, not 100k events.
    step = max(1, job.total // 100)
    return job.done % step == 0
