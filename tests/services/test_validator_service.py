"""The validator service end to end on a real NATS, in local-packages mode (R4 core from files).

Replicas run in-process (FastStream apps in the test loop) or as `python -m validator_service`
subprocesses (the kill -9 test).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from validator_service.bootstrap import ValidatorSettings, bootstrap
from validator_service.service import result_chunks

from fhirschema import engine_build
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    HEADER_MSG_ID,
    JobKind,
    JobState,
    JobStatus,
    ValidateChunk,
    ValidateRequest,
    ValidateResult,
    ValidateResultChunk,
)
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.servers import RunningServer, free_port
from fhirschema_bus.settings import NatsSettings
from fhirschema_bus.topology import DURABLES, consumer_config
from fhirschema_bus.worker import Worker, WorkerSettings
from tests.conftest import PACKAGES, ROOT

R4 = str(PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz")
FAST_RETRY = [0.05, 0.1, 0.2, 0.4]


def patient(i: int, valid: bool = True) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": f"F{i}"}]}
    res["gender"] = "female" if valid else "bogus"
    return res


def validator(nats_url: str, name: str = "") -> Worker:
    return bootstrap(
        settings=ValidatorSettings(packages=R4),
        nats=NatsSettings(url=nats_url, retry_delays_seconds=FAST_RETRY),
        worker_settings=WorkerSettings(instance=name or f"test-{uuid.uuid4().hex[:8]}", heartbeat_seconds=1),
    )


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[tuple[Worker, ...]]:
    for w in workers:
        await w.app.start()
    try:
        yield workers
    finally:
        for w in workers:
            await w.app.stop()


pytestmark = pytest.mark.servers


async def publish_batch(js: JetStreamContext, job_id: str, resources: list[dict[str, Any]]) -> None:
    async def one(i: int, res: dict[str, Any]) -> None:
        req = ValidateRequest(job_id=job_id, index=i, resource=res)
        await js.publish(
            s.VALIDATE_BATCH_ITEM,
            req.model_dump_json().encode(),
            headers={HEADER_MSG_ID: f"req.{job_id}.{i}"},
        )

    items = list(enumerate(resources))
    for k in range(0, len(items), 250):
        await asyncio.gather(*(one(i, r) for i, r in items[k : k + 250]))


async def wait_job(store: JobStore, job_id: str, timeout: float = 60.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await store.get(job_id)
        if job is not None and job.state.final:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished in {timeout}s: {await store.get(job_id)}")


async def stored_results(js: JetStreamContext, job_id: str) -> int:
    subject = s.job_result_subject(s.VALIDATE_RESULT, job_id)
    info = await js.stream_info(s.STREAM_RESULTS, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_single_valid_and_invalid_patient(nc: Client, nats_server: RunningServer) -> None:
    js = nc.jetstream()
    async with running(validator(nats_server.url)):
        results = []
        for i, ok in ((0, True), (1, False)):
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, max_msgs=1)
            req = ValidateRequest(job_id=uuid.uuid4().hex, resource=patient(i, ok), reply_to=inbox)
            await js.publish(s.VALIDATE_ONE, req.model_dump_json().encode())
            msg = await sub.next_msg(timeout=10)
            results.append(ValidateResult.model_validate_json(msg.data))
            # The caller gets its reply first; the stored record follows (stored exactly once).
            deadline = asyncio.get_running_loop().time() + 10
            while await stored_results(js, req.job_id) == 0 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            assert await stored_results(js, req.job_id) == 1
    good, bad = results
    assert good.valid and good.resource_type == "Patient" and good.error is None
    assert good.outcome["resourceType"] == "OperationOutcome"
    assert not bad.valid and bad.error is None  # invalid FHIR is a result, not a failure
    assert any("bogus" in i["diagnostics"] and i["severity"] == "error" for i in bad.outcome["issue"])


async def test_two_replicas_share_a_batch_each_result_stored_once(
    nc: Client, nats_server: RunningServer
) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    total = 2000
    job = await store.create(JobKind.VALIDATE, total=total)
    a, b = validator(nats_server.url, "replica-a"), validator(nats_server.url, "replica-b")
    async with running(a, b):
        t0 = time.monotonic()
        await publish_batch(js, job.id, [patient(i, valid=i % 10 != 0) for i in range(total)])
        final = await wait_job(store, job.id)
        elapsed = time.monotonic() - t0
        handled = (a.state["service"].handled, b.state["service"].handled)
        beats = await (await js.key_value(s.KV_SERVICES)).keys()
        details = a.details()
    print(f"\n2 replicas, {total} items: {elapsed:.2f}s ({total / elapsed:.0f}/s), split {handled}")
    assert final.state is JobState.SUCCEEDED
    assert (final.done, final.valid, final.invalid, final.failed) == (total, total - 200, 200, 0)
    assert await stored_results(js, job.id) == total
    assert min(handled) > 0, f"one replica did nothing: {handled}"
    assert {"validator.replica-a", "validator.replica-b"} <= set(beats)
    # The heartbeat (GET /info) says which build of the engine a replica runs.
    assert details["engine"] == ("compiled" if engine_build.compiled() else "python")


def test_result_chunks_split_under_the_limit_with_range_msg_ids() -> None:
    results = [orjson.dumps({"job_id": "j", "index": i, "pad": "x" * 300}) for i in (4, 5, 6, 7, 8)]
    one = result_chunks("j", [4, 5, 6, 7, 8], results)
    assert [msg_id for _, msg_id in one] == ["j.4-8"]
    assert [r["index"] for r in orjson.loads(one[0][0])["results"]] == [4, 5, 6, 7, 8]
    split = result_chunks("j", [4, 5, 6, 7, 8], results, limit=800)
    assert [msg_id for _, msg_id in split] == ["j.4-5", "j.6-7", "j.8-8"]
    assert all(len(data) <= 800 for data, _ in split)
    assert [r["index"] for data, _ in split for r in orjson.loads(data)["results"]] == [4, 5, 6, 7, 8]


async def test_chunk_results_stored_as_one_message_counted_once(
    nc: Client, nats_server: RunningServer
) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    job = await store.create(JobKind.VALIDATE, total=10)
    chunk = ValidateChunk(
        job_id=job.id,
        items=[{"index": i, "resource": patient(i, i % 3 != 0), "source": f"line {i}"} for i in range(10)],
    )
    async with running(validator(nats_server.url)):
        for attempt in range(2):  # the second delivery of the same chunk stores and counts nothing
            await js.publish(
                s.VALIDATE_BATCH_ITEM,
                chunk.model_dump_json().encode(),
                headers={HEADER_MSG_ID: f"c{attempt}"},
            )
            final = await wait_job(store, job.id)
            await asyncio.sleep(0.5)
    assert (final.done, final.valid, final.invalid) == (10, 6, 4)
    assert (await store.get(job.id)).done == 10
    assert await stored_results(js, job.id) == 1  # ONE ValidateResultChunk, msg id "<job>.0-9"
    sub = await js.pull_subscribe(s.job_result_subject(s.VALIDATE_RESULT, job.id), stream=s.STREAM_RESULTS)
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.headers[HEADER_MSG_ID] == f"{job.id}.0-9"
    results = ValidateResultChunk.model_validate_json(msg.data).results
    assert [r.index for r in results] == list(range(10))
    assert [r.valid for r in results] == [i % 3 != 0 for i in range(10)]
    assert results[1].source == "line 1" and results[1].resource_type == "Patient"


async def test_items_of_a_cancelled_job_are_skipped(nc: Client, nats_server: RunningServer) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    job = await store.create(JobKind.VALIDATE, total=12)
    await store.cancel(job.id)
    chunk = ValidateChunk(job_id=job.id, items=[{"index": i, "resource": patient(i)} for i in range(10)])
    async with running(validator(nats_server.url)) as (worker,):
        await js.publish(s.VALIDATE_BATCH_ITEM, chunk.model_dump_json().encode())
        await publish_batch(js, job.id, [patient(i) for i in range(10, 12)])  # one message per item
        service = worker.state["service"]
        deadline = time.monotonic() + 10
        while service.skipped < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (service.skipped, service.handled) == (12, 0)
    assert await stored_results(js, job.id) == 0
    final = await store.get(job.id)
    assert final is not None and final.state is JobState.CANCELLED and final.done == 0


@pytest.fixture
def spawn(nats_server: RunningServer) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, metrics_port: int = 0) -> subprocess.Popen[bytes]:
        env = {
            "FHIRSCHEMA_WORKER_HTTP_PORT": str(metrics_port),
            **os.environ,
            "FHIRSCHEMA_NATS_URL": nats_server.url,
            "FHIRSCHEMA_NATS_ACK_WAIT_SECONDS": "1",
            "FHIRSCHEMA_NATS_RETRY_DELAYS_SECONDS": orjson.dumps(FAST_RETRY).decode(),
            "FHIRSCHEMA_VALIDATOR_PACKAGES": R4,
            "FHIRSCHEMA_WORKER_INSTANCE": name,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "validator_service"], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture
async def short_ack_wait(nc: Client) -> AsyncIterator[None]:
    """The batch durable with a 1 s ack wait, so a dead replica's messages come back quickly.

    ensure_topology never changes an existing consumer, so the test updates it (and restores it).
    """
    js = nc.jetstream()
    durable = next(d for d in DURABLES if d.name == s.DURABLE_VALIDATOR_BATCH)
    await js.add_consumer(s.STREAM_REQUESTS, consumer_config(durable, NatsSettings(ack_wait_seconds=1.0)))
    yield
    await js.add_consumer(s.STREAM_REQUESTS, consumer_config(durable, NatsSettings()))


@pytest.mark.usefixtures("short_ack_wait")
async def test_killed_replica_loses_nothing(nc: Client, spawn: Any) -> None:
    js = nc.jetstream()
    ci = await js.consumer_info(s.STREAM_REQUESTS, s.DURABLE_VALIDATOR_BATCH)
    assert ci.config.ack_wait == 1.0
    store = await JobStore.open(js)
    total = 1500
    job = await store.create(JobKind.VALIDATE, total=total)
    first = spawn("doomed")
    await publish_batch(js, job.id, [patient(i) for i in range(total)])
    deadline = time.monotonic() + 30
    while (j := await store.get(job.id)) is not None and j.done < total // 5:
        assert time.monotonic() < deadline and first.poll() is None, "first replica made no progress"
        await asyncio.sleep(0.02)
    first.kill()  # SIGKILL mid-batch: its unacked messages must come back
    first.wait()
    mid = await store.get(job.id)
    assert mid is not None and mid.done < total, "batch finished before the kill; make it bigger"
    port = free_port()
    second = spawn("rescuer", metrics_port=port)
    final = await wait_job(store, job.id, timeout=60)
    metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert 'fhirschema_messages_processed_total{durable="validator-batch",service="validator"}' in metrics
    assert "fhirschema_message_seconds_bucket" in metrics
    # A clean SIGTERM stop of the second replica (graceful shutdown) within a few seconds.
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0
    assert final.state is JobState.SUCCEEDED and final.done == final.valid == total
    assert await stored_results(js, job.id) == total
