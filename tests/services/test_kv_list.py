"""Listing KV buckets on a real NATS creates no consumer (kv_list.py).

The gateway reads the services' heartbeats every 2 s (every 0.2 s while not ready); with
nats-py's `kv.keys()` each read left an ordered consumer on the bucket's stream for 5 minutes.
Here: after many reads, the stream's consumer count is what it was before, and kv.keys() itself
is shown to leak, so that the count would see a regression.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway.adapters.readiness import KvReadiness
from gateway.service.readiness import ReadinessGate
from nats.aio.client import Client

from fhirschema_bus import kv_list
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import Heartbeat, JobKind
from fhirschema_bus.ingest_status import IngestStatus
from fhirschema_bus.jobs import JobStore

POLLS = 40


async def _consumers(js: Any, bucket: str) -> int:
    return int((await js.stream_info(f"KV_{bucket}")).state.consumer_count)


async def test_heartbeat_polls_leave_no_consumer(nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.key_value(s.KV_SERVICES)
    for i in range(3):
        beat = Heartbeat(service="validator", instance=f"v{i}", version="t", detail={"ready": True})
        await kv.put(f"validator.v{i}", beat.model_dump_json().encode())
    await kv.put("not.a.heartbeat", b"{}")
    await kv.put("validator.gone", b"x")
    await kv.delete("validator.gone")

    before = await _consumers(js, s.KV_SERVICES)
    source = KvReadiness(SimpleNamespace(js=js))  # type: ignore[arg-type]
    gate = ReadinessGate(source, [], refresh_seconds=0.0)
    for _ in range(POLLS):
        beats = await source.heartbeats()
        await gate.refresh()
    assert sorted(b.instance for b in beats) == ["v0", "v1", "v2"]  # deleted key and junk left out
    assert await _consumers(js, s.KV_SERVICES) == before

    # The control: nats-py's keys() leaves one consumer per call (the server drops it after 5 min).
    for _ in range(5):
        await kv.keys()
    assert await _consumers(js, s.KV_SERVICES) >= before + 5


async def test_job_and_ingest_listings_leave_no_consumer(nc: Client) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    made = {(await store.create(JobKind.VALIDATE, total=1)).id for _ in range(3)}
    status = await IngestStatus.open(js)
    await status.kv.put("job.a", b"")  # an empty value is no record
    jobs_before, ingest_before = await _consumers(js, s.KV_JOBS), await _consumers(js, s.KV_INGEST)
    for _ in range(POLLS):
        listed = {j.id for j in await store.list_recent(1000)}
        assert await status.jobs() == [] and await status.packages() == []
    assert made <= listed
    assert await _consumers(js, s.KV_JOBS) == jobs_before
    assert await _consumers(js, s.KV_INGEST) == ingest_before


async def test_prefixes(nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.key_value(s.KV_INGEST)
    for key in ("pkg.a.1", "pkg.b.2", "job.x", "pkgx"):
        await kv.put(key, b"1")
    assert await kv_list.keys(js, s.KV_INGEST, "pkg.") == ["pkg.a.1", "pkg.b.2"]
    assert await kv_list.keys(js, s.KV_INGEST, "pkg") == ["pkg.a.1", "pkg.b.2", "pkgx"]
    assert [e.key for e in await kv_list.entries(js, s.KV_INGEST, "job.")] == ["job.x"]
    assert await kv_list.keys(js, "no_such_bucket") == []
