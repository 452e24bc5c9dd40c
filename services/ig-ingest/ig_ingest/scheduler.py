"""The scheduler (service layer): every replica runs the loop, the lease holder alone acts.

Each step of the leader: read the schedule (so a PUT is in force within one poll), find the due
tick (schedule.due_tick), resolve the masks, *claim* the tick by writing `schedule-runs`
compare-and-set on the revision it read (of two replicas that both think they lead, one claim
fails), then queue the run as an IngestRequest whose job id and Nats-Msg-Id derive from the tick
(schedule.run_id): JetStream keeps one copy, and the work-queue consumer gives it to one replica,
redelivering it to another if that one dies mid-run; the pipeline then skips what is stored
(name, version, SHA-256) and de-duplicates schemas per job, so nothing is stored twice. A claim
is marked `published` after the publish: a leader that died between the two leaves it unmarked,
and the next leader publishes the same request again (the same message id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from fhirschema_bus.contracts import IngestRequest, ScheduleRuns, now
from ig_ingest.lease import Lease
from ig_ingest.schedule import ScheduleStore, due_tick, run_id

log = logging.getLogger("ig_ingest.scheduler")
Publish = Callable[[IngestRequest], Awaitable[None]]
Discover = Callable[[list[str]], Awaitable[list[str]]]  # masks -> package names


class Scheduler:
    def __init__(
        self, store: ScheduleStore, lease: Lease, publish: Publish, discover: Discover,
        poll_seconds: float = 5.0, clock: Callable[[], datetime] = now,
    ) -> None:  # fmt: skip
        self.store, self.lease, self.publish, self.discover = store, lease, publish, discover
        self.poll, self.clock = poll_seconds, clock

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # NATS restarting, a registry down: the next poll tries again
                    log.exception("scheduler step failed")
                await asyncio.sleep(self.poll)
        finally:
            await asyncio.shield(self.lease.release())

    async def step(self) -> str | None:
        """One look at the schedule; the run id queued, or None."""
        if not await self.lease.acquire():
            return None
        runs, revision = await self.store.runs()
        if runs.request is not None and not runs.published:  # the last leader died before publishing
            return await self._publish(runs, revision)
        sched = await self.store.get()
        if sched is None:
            return None
        tick = due_tick(sched, runs.last_run, self.clock())
        if tick is None:
            return None
        job = run_id(tick)
        packages = list(dict.fromkeys([*sched.packages, *await self.discover(sched.masks)]))
        request = (
            IngestRequest(job_id=job, packages=packages, dependencies=sched.dependencies)
            if packages
            else None
        )
        claim = runs.model_copy(update={"last_run": tick, "last_job": job if packages else None,
                                        "request": request, "published": request is None})  # fmt: skip
        claimed = await self.store.put_runs(claim, revision)
        if claimed is None:
            log.info("tick %s claimed by another replica", tick.isoformat())
            return None
        if request is None:
            log.warning(
                "tick %s: nothing to ingest (no packages, masks %s matched none)",
                tick.isoformat(),
                sched.masks,
            )
            return None
        return await self._publish(claim, claimed)

    async def _publish(self, runs: ScheduleRuns, revision: int | None) -> str | None:
        assert runs.request is not None
        await self.publish(runs.request)
        log.info("scheduled run %s queued: %s", runs.request.job_id, ", ".join(runs.request.packages))
        done = runs.model_copy(update={"published": True})
        if await self.store.put_runs(done, revision) is None:
            log.info("scheduled run %s: its record was updated meanwhile", runs.request.job_id)
        return runs.request.job_id

    async def succeeded(self, job_id: str) -> None:
        """A scheduled run finished well: `last_success` (retried against concurrent writers)."""
        for _ in range(5):
            runs, revision = await self.store.runs()
            if runs.last_success is not None and runs.last_success >= self.clock():
                return
            if await self.store.put_runs(runs.model_copy(update={"last_success": self.clock()}), revision):
                return
