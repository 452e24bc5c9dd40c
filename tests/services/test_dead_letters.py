"""Failure handling on a real NATS: retries with backoff, dead letters, replay.

The validator runs in-process; its payload reader (the S3 port) is replaced by a fake that fails
as often as a test wants, which is how a transient S3 outage looks to the handler.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import orjson
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import DeadLetter, JobKind, JobState, ObjectRef, ValidateRequest
from fhirschema_bus.dead_letters import get_dead_letter, list_dead_letters, replay
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.object_store import ObjectStoreUnavailable
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import NatsSettings
from tests.services.test_validator_service import (
    patient,
    running,
    stored_results,
    validator,
    wait_job,
)


class FlakyStore:
    """Fails the first `failures` reads, then serves a valid Patient."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def aget(self, ref: ObjectRef) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise ObjectStoreUnavailable(f"S3 down (call {self.calls})")
        return orjson.dumps(patient(self.calls))


pytestmark = pytest.mark.servers


async def find_letter(js: JetStreamContext, tag: str, timeout: float = 15.0) -> DeadLetter:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for letter in await list_dead_letters(js, limit=1000):
            if letter.headers.get("Test-Tag") == tag:
                return letter
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dead letter tagged {tag}")


def by_ref(job_id: str) -> bytes:
    ref = ObjectRef(bucket="payloads", key=f"{job_id}.json")
    return ValidateRequest(job_id=job_id, resource_ref=ref).model_dump_json().encode()


async def test_poison_message_is_dead_lettered_at_once(nc: Client, nats_server: RunningServer) -> None:
    js = nc.jetstream()
    tag = uuid.uuid4().hex
    async with running(validator(nats_server.url)):
        await js.publish(s.VALIDATE_BATCH_ITEM, b'{"job_id": "x", "resource": {', headers={"Test-Tag": tag})
        letter = await find_letter(js, tag)
    assert letter.subject == s.VALIDATE_BATCH_ITEM and letter.service == "validator"
    assert base64.b64decode(letter.payload) == b'{"job_id": "x", "resource": {'
    assert letter.deliveries == 1  # malformed: no retry can help
    assert "ValidationError" in letter.error
    assert letter.stream_seq is not None
    again = await get_dead_letter(js, letter.stream_seq)
    assert again is not None and again.payload == letter.payload
    assert await get_dead_letter(js, 10**9) is None
    assert await replay(js, 10**9) is None


async def test_transient_failure_is_retried_then_succeeds(nc: Client, nats_server: RunningServer) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    job = await store.create(JobKind.VALIDATE, total=1)
    flaky = FlakyStore(failures=2)
    async with running(w := validator(nats_server.url)):
        w.state["service"].payloads = flaky
        await js.publish(s.VALIDATE_BATCH_ITEM, by_ref(job.id))
        final = await wait_job(store, job.id, timeout=15)
    assert flaky.calls == 3  # two NAKs with backoff, then success
    assert final.state is JobState.SUCCEEDED and final.valid == 1
    assert await stored_results(js, job.id) == 1


async def test_exhausted_deliveries_dead_letter_then_replay(nc: Client, nats_server: RunningServer) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    job = await store.create(JobKind.VALIDATE, total=1)
    tag = uuid.uuid4().hex
    max_deliver = NatsSettings().max_deliver
    flaky = FlakyStore(failures=10**6)
    async with running(w := validator(nats_server.url)):
        w.state["service"].payloads = flaky
        await js.publish(s.VALIDATE_BATCH_ITEM, by_ref(job.id), headers={"Test-Tag": tag})
        letter = await find_letter(js, tag)
        assert letter.deliveries == max_deliver == flaky.calls
        assert "ObjectStoreUnavailable" in letter.error and "S3 down" in letter.error
        assert (await store.get(job.id)).done == 0  # type: ignore[union-attr]

        flaky.failures = 0  # S3 is back: replaying the dead letter completes the job
        assert letter.stream_seq is not None
        ack = await replay(js, letter.stream_seq)
        assert ack is not None and ack.stream == s.STREAM_REQUESTS
        final = await wait_job(store, job.id, timeout=15)
    assert final.state is JobState.SUCCEEDED and final.valid == 1
    assert await stored_results(js, job.id) == 1
