"""The IG schedule: the model and its ticks without servers; get/put over a real NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from ig_ingest.schedule import StoredSchedule, due_tick, next_tick, run_id
from nats.aio.client import Client
from pydantic import ValidationError
from storage_service.app import Storage

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import IngestSchedule, ScheduleReply
from fhirschema_bus.servers import RunningServer
from tests.services.test_ig_ingest import run_ingest

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def test_cron_and_timezone_checked() -> None:
    assert IngestSchedule(cron="17  3 * * *").cron == "17 3 * * *"
    assert IngestSchedule(cron="0 * * * * 30").cron == "0 * * * * 30"  # seconds last
    for bad, why in [("61 3 * * *", "not a valid cron"), ("* * *", "3 fields"), ("nightly", "1 fields")]:
        with pytest.raises(ValidationError, match=why):
            IngestSchedule(cron=bad)
    with pytest.raises(ValidationError, match="IANA"):
        IngestSchedule(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="mask"):
        IngestSchedule(masks=["hl7 fhir us"])


def test_next_and_due_ticks_in_the_schedule_timezone() -> None:
    berlin = StoredSchedule(cron="17 3 * * *", timezone="Europe/Berlin", updated=T0 - timedelta(days=3))
    nxt = next_tick(berlin, T0)
    assert nxt.astimezone(UTC) == datetime(2026, 12, 4, 2, 17, tzinfo=UTC)  # 03:17 CET
    # never run: the newest tick after the schedule was stored is due, once
    due = due_tick(berlin, None, T0)
    assert due is not None and due.astimezone(UTC) == datetime(2026, 12, 3, 2, 17, tzinfo=UTC)
    assert due_tick(berlin, due, T0) is None  # ran: not again
    # down for two days: only the newest missed tick runs
    assert due_tick(berlin, due - timedelta(days=2), T0) == due
    # a schedule put after the last tick does not run it
    assert due_tick(berlin.model_copy(update={"updated": T0 - timedelta(hours=1)}), None, T0) is None
    assert due_tick(berlin.model_copy(update={"enabled": False}), None, T0) is None
    assert run_id(due) == run_id(due.astimezone(UTC)) == f"sched-{int(due.timestamp())}"


async def ask(nc: Client, subject: str, body: bytes) -> ScheduleReply:
    return ScheduleReply.model_validate_json((await nc.request(subject, body, timeout=10)).data)


async def test_schedule_get_put_over_nats(storage: Storage, nats_server: RunningServer, nc: Client) -> None:
    w = await run_ingest(storage, nats_server, "")
    try:
        await (await nc.jetstream().key_value(s.KV_INGEST)).purge("schedule")
        assert (await ask(nc, s.INGEST_SCHEDULE_GET, b"{}")).schedule is None
        body = {"cron": "17 3 * * *", "timezone": "UTC", "packages": ["hl7.fhir.us.core#6.1.0"],
                "masks": ["hl7.fhir.au.*"], "enabled": True}  # fmt: skip
        put = await ask(nc, s.INGEST_SCHEDULE_PUT, orjson.dumps(body))
        assert put.status == 200 and put.schedule is not None, put
        assert put.schedule.packages == body["packages"] and put.schedule.masks == body["masks"]
        assert put.schedule.next_run is not None and put.schedule.next_run > datetime.now(UTC)
        assert (put.schedule.next_run.hour, put.schedule.next_run.minute) == (3, 17)
        assert put.schedule.last_run is None and put.schedule.last_job is None
        got = await ask(nc, s.INGEST_SCHEDULE_GET, b"")
        assert got.schedule == put.schedule
        bad = await ask(nc, s.INGEST_SCHEDULE_PUT, orjson.dumps({**body, "cron": "99 3 * * *"}))
        assert bad.status == 400 and bad.error and "cron" in bad.error and bad.schedule is None
        assert (await ask(nc, s.INGEST_SCHEDULE_PUT, b"not json")).status == 400
        assert (await ask(nc, s.INGEST_SCHEDULE_GET, b"")).schedule == put.schedule  # unchanged
    finally:
        await w.app.stop()
