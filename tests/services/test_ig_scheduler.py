"""The scheduler across replicas on a real NATS: the lease, a tick run once, a leader killed
mid-run, a tick missed while everything was down (two real ig-ingest processes, real storage)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from ig_ingest.lease import LEASE_KEY, Lease
from ig_ingest.schedule import ScheduleStore, run_id
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from storage_service.app import Storage

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import IngestJob, IngestSchedule, JobState
from fhirschema_bus.processes import start_service, stop_process
from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import NatsSettings
from fhirschema_bus.topology import ensure_topology
from tests.conftest import ROOT
from tests.services.registry_server import Registry, make_package, profile, serve_registry
from tests.services.test_ig_ingest import ingest_job, wait_schemas

ACK_WAIT = 6.0  # a killed replica's run goes to the other one after this


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_lease_one_holder_and_takeover(nc: Client) -> None:
    kv = await nc.jetstream().key_value(s.KV_INGEST)
    await kv.purge("lease-test")
    ca, cb = Clock(), Clock()
    a = Lease(kv, "a", ttl=2.0, key="lease-test", clock=ca)
    b = Lease(kv, "b", ttl=2.0, key="lease-test", clock=cb)
    assert await a.acquire() and not await b.acquire()
    cb.t = 5.0
    assert await a.acquire()  # renewed: b saw a new revision, its wait starts again
    assert not await b.acquire()
    cb.t = 6.0
    assert not await b.acquire()  # 1 s unchanged: a may still be alive
    cb.t = 7.5
    assert await b.acquire()  # 2.5 s unchanged: a stopped renewing
    assert not await a.acquire() and not a.held  # a notices it lost the lease
    await b.release()
    assert await a.acquire()  # released: taken at once


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with serve_registry() as reg:
        reg.add(
            "example.fast",
            "1.0.0",
            make_package("example.fast", "1.0.0", resources=[profile("f1"), profile("f2")]),
        )
        slow = make_package("example.slow", "1.0.0", resources=[profile("s1"), profile("s2"), profile("s3")])
        reg.add("example.slow", "1.0.0", slow)
        reg.slow = {"example.slow/1.0.0"}  # the tarball download stalls: the run is caught mid-way
        reg.slow_seconds = 10.0  # longer than the ack wait: replica-a says it is in progress
        yield reg


@pytest.fixture
def replicas(
    storage: Storage, nats_server: RunningServer, registry: Registry, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    st = storage.store.settings
    paths = [str(ROOT / "services" / n) for n in ("storage", "ig-ingest")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "FHIRSCHEMA_NATS_URL": nats_server.url, "FHIRSCHEMA_NATS_ACK_WAIT_SECONDS": str(ACK_WAIT),
        "FHIRSCHEMA_S3_ENDPOINT": st.endpoint, "FHIRSCHEMA_S3_ACCESS_KEY": st.access_key.get_secret_value(),
        "FHIRSCHEMA_S3_SECRET_KEY": st.secret_key.get_secret_value(),
        "FHIRSCHEMA_S3_BUCKET_PACKAGES": st.bucket_packages,
        "FHIRSCHEMA_PACKAGES": "", "FHIRSCHEMA_PACKAGE_SOURCES": registry.base, "FHIRSCHEMA_IG_CI_BUILD_URL": "",
        "FHIRSCHEMA_IG_SCHEDULE_POLL_SECONDS": "0.2", "FHIRSCHEMA_IG_LEASE_SECONDS": "2",
        "FHIRSCHEMA_WORKER_METRICS_PORT": "0",
    }  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        proc = start_service(
            "ig_ingest", {**env, "FHIRSCHEMA_WORKER_INSTANCE": name}, tmp_path / f"{name}.log"
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def tick_cron(at: datetime) -> str:
    """A daily cron (seconds field last) whose next tick is `at`."""
    at = at.astimezone(UTC)
    return f"{at.minute} {at.hour} * * * {at.second}"


async def until(check: Callable[[], object], timeout: float, what: str) -> None:
    for _ in range(int(timeout * 10)):
        if await check():  # type: ignore[misc]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


async def scheduled_jobs(nc: Client) -> list[str]:
    kv = await nc.jetstream().key_value(s.KV_INGEST)
    try:
        return sorted(k.removeprefix("job.") for k in await kv.keys() if k.startswith("job.sched-"))
    except Exception:
        return []


async def lease_holder(nc: Client) -> dict | None:
    kv = await nc.jetstream().key_value(s.KV_INGEST)
    try:
        entry = await kv.get(LEASE_KEY)
    except Exception:
        return None
    return orjson.loads(entry.value) if entry.value else None


async def test_scheduled_run_once_leader_killed_and_missed_tick(
    storage: Storage, nats_server: RunningServer, nc: Client, registry: Registry,
    replicas: Callable[[str], subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    js = nc.jetstream()
    # This module's ingest consumer with a short ack wait (the `nc` fixture made it with 30 s).
    try:
        await js.delete_consumer(s.STREAM_REQUESTS, s.DURABLE_INGEST)
    except NotFoundError:
        pass
    await ensure_topology(js, NatsSettings(url=nats_server.url, ack_wait_seconds=ACK_WAIT))
    store = ScheduleStore(await js.key_value(s.KV_INGEST))
    await store.kv.purge("schedule")

    # 1. Two replicas; replica-b paused (SIGSTOP) so that the leader, replica-a, takes the run.
    a, b = replicas("replica-a"), replicas("replica-b")
    for name in ("replica-a", "replica-b"):
        await until(lambda n=name: _started(nc, n), 40, f"{name} is up")  # type: ignore[misc]
    b.send_signal(signal.SIGSTOP)
    await until(lambda: _holder_is(nc, "replica-a"), 20, "replica-a holds the lease")
    await asyncio.sleep(1.5)  # replica-b's last pull request expires (1 s)
    tick = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0) + timedelta(seconds=1)
    await store.put(IngestSchedule(cron=tick_cron(tick), packages=["example.fast", "example.slow"]))
    job_id = run_id(tick)

    async def mid_run() -> bool:
        job = await _job(nc, job_id)
        states = {p.name: p.state for p in job.packages} if job is not None else {}
        return states.get("example.slow") == "running" and states.get("example.fast") == "succeeded"

    # The leader is killed with one package stored and the other downloading.
    await until(mid_run, 30, "the scheduled run is under way on replica-a")
    b.send_signal(signal.SIGCONT)
    a.send_signal(signal.SIGKILL)
    a.wait(5)

    # 2. The other replica takes the lease over, and the run (redelivered) completes there.
    await until(lambda: _holder_is(nc, "replica-b"), 20, "replica-b took the lease over")
    job = await ingest_job(nc, job_id, timeout=40)
    assert job.state is JobState.SUCCEEDED, job
    by = {p.name: p for p in job.packages}
    assert by["example.fast"].skipped and by["example.fast"].schemas == 2, job  # done by a: not stored again
    assert (by["example.slow"].schemas, by["example.slow"].total) == (3, 3), job
    assert await scheduled_jobs(nc) == [job_id]  # the tick ran once
    runs, _ = await store.runs()
    assert runs.last_run == tick and runs.last_job == job_id and runs.published
    await until(lambda: _last_success(store), 10, "last_success recorded")
    state, _ = await read_state(await repository_kv(js))
    assert [p.package for p in state.packages].count("example.slow#1.0.0") == 1
    for pkg, n in (("example.fast#1.0.0", 2), ("example.slow#1.0.0", 3)):
        assert (await wait_schemas(nc, pkg, n))["total"] == n  # stored once each

    # 3. Everything down across a tick: it runs once when two replicas start together.
    stop_process(b)
    missed = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    await store.put(IngestSchedule(cron=tick_cron(missed), packages=["example.fast"]))
    await asyncio.sleep((missed - datetime.now(UTC)).total_seconds() + 1)
    replicas("replica-c"), replicas("replica-d")
    missed_job = await ingest_job(nc, run_id(missed), timeout=40)
    assert missed_job.state is JobState.SUCCEEDED and missed_job.packages[0].skipped, missed_job
    await asyncio.sleep(2)  # both replicas poll ten times more: nothing else runs
    assert await scheduled_jobs(nc) == sorted([job_id, run_id(missed)])
    holder = await lease_holder(nc)
    assert holder is not None and holder["holder"] in ("replica-c", "replica-d")


async def _job(nc: Client, job_id: str) -> IngestJob | None:
    kv = await nc.jetstream().key_value(s.KV_INGEST)
    try:
        entry = await kv.get(f"job.{job_id}")
    except Exception:
        return None
    return IngestJob.model_validate_json(entry.value) if entry.value else None


async def _holder_is(nc: Client, name: str) -> bool:
    holder = await lease_holder(nc)
    return holder is not None and holder["holder"] == name


async def _started(nc: Client, name: str) -> bool:
    kv = await nc.jetstream().key_value(s.KV_SERVICES)
    try:
        return any(name in k for k in await kv.keys())
    except Exception:
        return False


async def _last_success(store: ScheduleStore) -> bool:
    return (await store.runs())[0].last_success is not None
