"""The IG schedule: what it is (pure: next and due ticks, croniter), where it is kept (KV_INGEST
`schedule` and `schedule-runs`) and the request/reply handlers of INGEST_SCHEDULE_GET/PUT.

Every replica reads the stored schedule at each scheduler step, so a PUT (to any replica, or a
direct KV write) is in force within one poll: no restart, no reload signal.

A tick is *due* when it is the newest cron time not after now and it is later than both the
last tick run and the moment the schedule was stored: a tick missed while every replica was down
runs once at start-up (the newest only, not one run per missed tick), and a schedule just put
does not run a tick from before it existed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from croniter import croniter
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import Field, ValidationError

from fhirschema_bus.contracts import IngestSchedule, ScheduleReply, ScheduleRuns, ScheduleView, now

log = logging.getLogger("ig_ingest.schedule")
SCHEDULE_KEY = "schedule"
RUNS_KEY = "schedule-runs"
SCHEDULED = "sched-"  # the job id prefix of scheduled runs


class StoredSchedule(IngestSchedule):
    """The schedule as kept in KV: with the time it was put (ticks before it are never due)."""

    updated: datetime = Field(default_factory=now)


def _cron(sched: IngestSchedule, at: datetime) -> croniter:
    return croniter(sched.cron, at.astimezone(ZoneInfo(sched.timezone)))


def next_tick(sched: IngestSchedule, at: datetime) -> datetime:
    return cast(datetime, _cron(sched, at).get_next(datetime))


def due_tick(sched: StoredSchedule, last_run: datetime | None, at: datetime) -> datetime | None:
    """The tick to run now, or None (see the module docstring)."""
    if not sched.enabled:
        return None
    tick = cast(datetime, _cron(sched, at).get_prev(datetime))
    floor = max(t for t in (last_run, sched.updated) if t is not None)
    return tick if tick > floor else None


def run_id(tick: datetime) -> str:
    """The job id of a tick's run: derived from the scheduled time alone, so that every replica
    (and a restart) names the same run the same way and JetStream de-duplicates its request."""
    return f"{SCHEDULED}{int(tick.timestamp())}"


class ScheduleStore:
    """The KV adapter. `schedule-runs` is written compare-and-set on its revision: the claim of a
    tick (scheduler.py) fails for a replica that read an older revision."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self) -> StoredSchedule | None:
        try:
            entry = await self.kv.get(SCHEDULE_KEY)
        except KeyNotFoundError:
            return None
        return StoredSchedule.model_validate_json(entry.value) if entry.value else None

    async def put(self, sched: IngestSchedule) -> StoredSchedule:
        stored = StoredSchedule(**sched.model_dump(), updated=now())
        await self.kv.put(SCHEDULE_KEY, stored.model_dump_json().encode())
        return stored

    async def runs(self) -> tuple[ScheduleRuns, int | None]:
        """What ran last and the revision to update it from (None: never written)."""
        try:
            entry = await self.kv.get(RUNS_KEY)
        except KeyNotFoundError:
            return ScheduleRuns(), None
        if not entry.value:
            return ScheduleRuns(), entry.revision
        return ScheduleRuns.model_validate_json(entry.value), entry.revision

    async def put_runs(self, runs: ScheduleRuns, revision: int | None) -> int | None:
        """Compare-and-set: the new revision, or None when another writer got there first."""
        body = runs.model_dump_json().encode()
        try:
            if revision is None:
                return cast(int, await self.kv.create(RUNS_KEY, body))
            return cast(int, await self.kv.update(RUNS_KEY, body, last=revision))
        except KeyWrongLastSequenceError:  # create of a key that exists, too
            return None

    async def view(self, at: datetime | None = None) -> ScheduleView | None:
        sched = await self.get()
        if sched is None:
            return None
        runs, _ = await self.runs()
        fields = sched.model_dump(exclude={"updated"})
        nxt = next_tick(sched, at or now()) if sched.enabled else None
        return ScheduleView(**fields, next_run=nxt, last_run=runs.last_run, last_job=runs.last_job)


async def handle_get(store: ScheduleStore) -> ScheduleReply:
    try:
        return ScheduleReply(schedule=await store.view())
    except Exception as e:  # KV unreachable: said, not a time-out at the caller
        log.exception("schedule get")
        return ScheduleReply(error=f"the schedule cannot be read: {e}", status=503)


async def handle_put(store: ScheduleStore, body: bytes | str | dict[str, Any]) -> ScheduleReply:
    """Validate (a bad cron, time zone or mask is a 400 saying why), store, answer the view."""
    try:
        sched = (
            IngestSchedule.model_validate(body) if isinstance(body, dict)
            else IngestSchedule.model_validate_json(body or b"{}")
        )  # fmt: skip
    except ValidationError as e:
        why = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
        )
        return ScheduleReply(error=why, status=400)
    try:
        await store.put(sched)
        log.info("schedule stored: %r in %s, %d packages, %d masks, enabled=%s",
                 sched.cron, sched.timezone, len(sched.packages), len(sched.masks), sched.enabled)  # fmt: skip
        return ScheduleReply(schedule=await store.view())
    except Exception as e:
        log.exception("schedule put")
        return ScheduleReply(error=f"the schedule cannot be stored: {e}", status=503)
