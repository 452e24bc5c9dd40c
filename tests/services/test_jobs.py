"""JobStore on a real NATS: transitions, events, and each item counted once under redelivery."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobEvent, JobKind, JobState
from fhirschema_bus.jobs import JobStore


async def test_transitions_and_events(nc: Client) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    job_id = uuid.uuid4().hex
    events = await js.subscribe(f"{s.JOB_EVENTS}.{job_id}", ordered_consumer=True)

    job = await store.create(JobKind.VALIDATE, total=3, job_id=job_id)
    assert job.state is JobState.QUEUED
    assert (await store.get(job_id)).state is JobState.QUEUED
    await store.record(job_id, 0, "valid")
    assert (await store.get(job_id)).state is JobState.RUNNING
    await store.record(job_id, 1, "invalid")
    done = await store.record(job_id, 2, "failed")
    assert done is not None and done.state is JobState.SUCCEEDED and done.finished is not None
    assert (done.done, done.valid, done.invalid, done.failed) == (3, 1, 1, 1)

    states = []
    for _ in range(5):  # created, running (+progress), ..., succeeded
        msg = await events.next_msg(timeout=2)
        states.append(JobEvent.model_validate_json(msg.data).state)
        if states[-1] is JobState.SUCCEEDED:
            break
    assert states[0] is JobState.QUEUED and JobState.RUNNING in states and states[-1] is JobState.SUCCEEDED
    assert job_id in [j.id for j in await store.list_recent(1000)]


async def test_cancel_stops_counting(nc: Client) -> None:
    store = await JobStore.open(nc.jetstream())
    job = await store.create(JobKind.VALIDATE, total=10)
    await store.record(job.id, 0, "valid")
    cancelled = await store.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished is not None
    after = await store.record(job.id, 1, "valid")
    assert after is not None and after.done == 1  # late items of a cancelled job are not counted
    assert (await store.cancel(job.id)).state is JobState.CANCELLED  # idempotent
    assert await store.get("no-such-job") is None
    assert await store.record("no-such-job", 0, "valid") is None


async def test_a_failed_job_counts_what_was_stored(nc: Client) -> None:
    # Items in flight when the job failed have their results stored: they are counted (once),
    # so its counts equal its stored results; it stays failed.
    store = await JobStore.open(nc.jetstream())
    job = await store.create(JobKind.VALIDATE, total=2)
    await store.record(job.id, 0, "valid")
    await store.fail(job.id, "could not enqueue the batch")
    after = await store.record_many(job.id, [(1, "invalid"), (1, "invalid")])
    final = await store.get(job.id)
    assert final is not None and (final.state, final.done, final.invalid) == (JobState.FAILED, 2, 1)
    assert after[0] is not None and after[1] is None


async def test_counts_once_under_redelivery_and_concurrency(nc: Client) -> None:
    js = nc.jetstream()
    a, b = await JobStore.open(js), await JobStore.open(js)
    total = 200
    job = await a.create(JobKind.VALIDATE, total=total)
    # Every item recorded three times (a redelivery to each of two replicas), all concurrently.
    calls = [
        store.record(job.id, i, "valid" if i % 2 else "invalid") for i in range(total) for store in (a, b, a)
    ]
    results = await asyncio.gather(*calls)
    assert sum(r is not None for r in results) == total  # only the first of each counted
    final = await a.get(job.id)
    assert final is not None
    assert (final.done, final.valid, final.invalid, final.failed) == (total, total // 2, total // 2, 0)
    assert final.state is JobState.SUCCEEDED
