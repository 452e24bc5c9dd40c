"""Job status in the JetStream KV bucket `KV_JOBS`, with events on `JOB_EVENTS.<job_id>`.

Many replicas update one job at the same time, so every change is a read-modify-write guarded by
the KV revision (optimistic concurrency, retried on conflict). An item is counted once even when
its message is redelivered: `record` first creates the marker "<job>.<index>" in `KV_IDEMPOTENCY`
(`create` fails if the key exists: the cheap path for redeliveries), then adds the index to the
job's counted ranges and the counts in one revision-checked write (see COUNTED_KEY).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import uuid
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from fhirschema_bus import kv_list
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobEvent, JobKind, JobState, JobStatus, Outcome, now
from fhirschema_bus.tracing import outgoing

MAX_CONFLICT_RETRIES = 200  # two replicas x a few hundred items in flight on one key
PENDING, COUNTED = b"pending", b"counted"
# The authority for "counted once": the job's counted indexes as inclusive [lo, hi] ranges, updated
# in the same revision-checked write as the counts. The KV_IDEMPOTENCY marker alone cannot be: a
# worker killed between creating the marker and updating the counts would lose the item. Items
# are processed roughly in order, so the list stays a handful of ranges (gaps ~ items in flight).
COUNTED_KEY = "counted"


class JobNotFound(KeyError):
    pass


class JobStore:
    def __init__(self, js: JetStreamContext, jobs: KeyValue, done: KeyValue) -> None:
        self._js = js
        self._jobs = jobs
        self._done = done
        self._pending: dict[str, list[tuple[int, Outcome, asyncio.Future[JobStatus | None]]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

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
        # kv_list: no consumer per call (kv.keys() left one for 5 minutes; GET /jobs is polled)
        found = await kv_list.entries(self._js, s.KV_JOBS, kv=self._jobs)
        jobs = [JobStatus.model_validate_json(e.value) for e in found if e.value]
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
        """Count one item's outcome exactly once; None when already counted or no such job.

        Returns once the count is stored (ack the message after that). Concurrent calls for one
        job are merged into one KV write (group commit): many handlers in flight on one hot key
        would otherwise spend their time losing revision races.
        """
        marker = f"{job_id}.{index}"
        try:
            await self._done.create(marker, PENDING)
        except KeyWrongLastSequenceError:
            with contextlib.suppress(KeyNotFoundError):
                if (await self._done.get(marker)).value == COUNTED:
                    return None  # a redelivery: the first delivery counted it
            # PENDING: an earlier delivery died (or is still running) between marking and
            # counting. The job's own index ranges decide, atomically with the counts.
        future: asyncio.Future[JobStatus | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(job_id, []).append((index, outcome, future))
        if job_id not in self._flushers:
            self._flushers[job_id] = asyncio.create_task(self._flush(job_id))
        job = await future
        if job is not None:
            with contextlib.suppress(Exception):  # only a shortcut for later redeliveries
                await self._done.put(marker, COUNTED)
        return job

    async def record_many(self, job_id: str, items: list[tuple[int, Outcome]]) -> list[JobStatus | None]:
        """Count several items (a chunk) exactly once each, in the same group commit as `record`.

        No per-item markers: the job's counted ranges, written atomically with the counts, are
        what makes a redelivered chunk count nothing twice. Returns once the counts are stored.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[JobStatus | None]] = [loop.create_future() for _ in items]
        pending = self._pending.setdefault(job_id, [])
        pending.extend((i, o, f) for (i, o), f in zip(items, futures, strict=True))
        if job_id not in self._flushers:
            self._flushers[job_id] = asyncio.create_task(self._flush(job_id))
        return list(await asyncio.gather(*futures))

    async def _flush(self, job_id: str) -> None:
        try:
            while batch := self._pending.pop(job_id, None):
                try:
                    results = await self._count(job_id, [(i, o) for i, o, _ in batch])
                except JobNotFound:
                    results = [None] * len(batch)  # e.g. a single POST /validate: no job tracks it
                except Exception as e:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, _, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._flushers.pop(job_id, None)

    async def _count(self, job_id: str, items: list[tuple[int, Outcome]]) -> list[JobStatus | None]:
        fresh: list[bool] = []

        def change(job: JobStatus) -> bool:
            fresh.clear()
            if job.state is JobState.CANCELLED:
                fresh.extend([True] * len(items))  # not counted, but not a duplicate either
                return False  # late items of a cancelled job are not counted
            # A failed job still counts the items whose results were stored (those in flight
            # when it failed): its counts always equal its stored results. Its state stays.
            ranges = job.detail.setdefault(COUNTED_KEY, [])
            for index, outcome in items:
                fresh.append(_add_index(ranges, index))
                if fresh[-1]:
                    setattr(job, outcome, getattr(job, outcome) + 1)
                    job.done += 1
            if not any(fresh):
                return False
            if job.state is JobState.QUEUED:
                job.state = JobState.RUNNING
            _finish_if_done(job)  # (a failed job stays failed: it is final)
            return True

        job = await self._update(job_id, change, progress=True)
        return [job if ok else None for ok in fresh]

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
            before, before_done = job.state, job.done
            if not change(job):
                return job
            job.updated = now()
            try:
                await self._jobs.update(job_id, job.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                # Another replica won the race: back off a little (jitter spreads the retries).
                await asyncio.sleep(random.uniform(0, 0.005))
                continue
            if job.state is not before or not progress or _progress_tick(job, before_done):
                await self._publish(job)
            return job
        raise RuntimeError(f"job {job_id}: too many concurrent updates")

    async def _publish(self, job: JobStatus) -> None:
        event = JobEvent(
            job_id=job.id, state=job.state, total=job.total, done=job.done,
            valid=job.valid, invalid=job.invalid, failed=job.failed,
        )  # fmt: skip
        subject = s.job_result_subject(s.JOB_EVENTS, job.id)
        await self._js.publish(subject, event.model_dump_json().encode(), headers=outgoing())


def _add_index(ranges: list[list[int]], i: int) -> bool:
    """Insert `i` into sorted, disjoint, inclusive ranges; False if it is already there."""
    k = bisect.bisect_right([r[0] for r in ranges], i)  # ranges[k - 1] starts at or before i
    if k and ranges[k - 1][1] >= i:
        return False
    left = bool(k) and ranges[k - 1][1] == i - 1
    right = k < len(ranges) and ranges[k][0] == i + 1
    if left and right:
        ranges[k - 1][1] = ranges[k][1]
        del ranges[k]
    elif left:
        ranges[k - 1][1] = i
    elif right:
        ranges[k][0] = i
    else:
        ranges.insert(k, [i, i])
    return True


def _finish_if_done(job: JobStatus) -> None:
    if job.total and job.done >= job.total and not job.state.final:
        job.state, job.finished = JobState.SUCCEEDED, now()


def _progress_tick(job: JobStatus, before: int) -> bool:
    # Progress events about every 1% of a job: a WebSocket needs a moving bar, not 100k events.
    step = max(1, job.total // 100)
    return job.done // step != before // step
