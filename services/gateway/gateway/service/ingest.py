"""The IG pipeline over HTTP (issue 11 §4): queue an ingest job, show its status and what is
ingested, search the configured registries, read and set the schedule. ig-ingest does the work; this layer checks the
request against the configuration and shapes the answers of the fixed HTTP contract."""

from __future__ import annotations

import logging
import re

from fhirschema.ids import PackageId
from fhirschema_bus.contracts import (
    IngestAccepted,
    IngestJob,
    IngestOverview,
    IngestPackageStatus,
    IngestProcess,
    IngestRequest,
    IngestSchedule,
    RegistryPackage,
    RegistryQuery,
    ScheduleReply,
    ScheduleView,
)
from gateway.bus import RETRY_AFTER_SECONDS
from gateway.errors import BadRequest, BusUnavailable, GatewayError, NotFound
from gateway.ports import IngestJobs, IngestSchedules, RegistrySearch
from gateway.service.dispatch import new_job_id

log = logging.getLogger("gateway.ingest")
# KV_INGEST keys are `job.<id>`: an id outside these characters cannot name a job.
_JOB_ID = re.compile(r"[-_=a-zA-Z0-9]{1,128}")
RECENT_JOBS = 20


class RegistriesUnavailable(GatewayError):
    status = 502


class IngestService:
    def __init__(
        self, jobs: IngestJobs, registries: RegistrySearch, configured: list[str], schedules: IngestSchedules
    ) -> None:
        self.jobs, self.registries, self.schedules = jobs, registries, schedules
        self.configured = configured  # registry names (PackageSettings.registry_names)

    def registry(self, base: str) -> str:
        """A request's `registry`, which must be a configured one: the gateway never lets a
        caller make the service fetch from an address of its choosing."""
        wanted = base.strip().rstrip("/")
        if wanted not in self.configured:
            raise BadRequest(
                f"registry {base!r} is not configured; configured registries "
                f"(FHIRSCHEMA_PACKAGE_SOURCES): {', '.join(self.configured) or 'none'}"
            )
        return wanted

    async def process(self, body: IngestProcess) -> IngestAccepted:
        registry = self.registry(body.registry) if body.registry is not None else None
        job_id = new_job_id()
        req = IngestRequest(
            job_id=job_id, packages=body.packages, dependencies=body.dependencies, registry=registry
        )
        queued = [IngestPackageStatus(name=PackageId.split(p)[0], requested=p) for p in body.packages]
        # Recorded before it is published: GET /ig/status/{job} answers at once, and ig-ingest
        # takes this record over when it starts the job.
        await self.jobs.queue(req, IngestJob(job=job_id, requested=body.packages, packages=queued))
        return IngestAccepted(job=job_id, status=f"/ig/status/{job_id}")

    async def job(self, job_id: str) -> IngestJob:
        job = await self.jobs.job(job_id) if _JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise NotFound(f"no ingest job {job_id!r}")
        return job

    async def overview(self) -> IngestOverview:
        return IngestOverview(packages=await self.jobs.packages(), jobs=await self.jobs.jobs(RECENT_JOBS))

    async def search(self, query: RegistryQuery) -> list[RegistryPackage]:
        answer = await self.registries.search(query)
        if answer.errors and not answer.packages:
            raise RegistriesUnavailable("no registry could be searched: " + "; ".join(answer.errors))
        if answer.errors:  # the others' results still count
            log.warning(
                "registry search %s: %s", query.model_dump(exclude_none=True), "; ".join(answer.errors)
            )
        return answer.packages

    async def schedule(self) -> ScheduleView:
        return self._schedule(await self.schedules.get_schedule())

    async def put_schedule(self, schedule: IngestSchedule) -> ScheduleView:
        # Checked here already (the body model: 400 naming the field); ig-ingest checks again,
        # for direct NATS publishers, and its 400 is passed on as it says it.
        return self._schedule(await self.schedules.put_schedule(schedule))

    @staticmethod
    def _schedule(reply: ScheduleReply) -> ScheduleView:
        if reply.status == 400:
            raise BadRequest(reply.error or "the schedule was refused")
        if reply.status >= 500:  # KV unavailable at ig-ingest: retry, like NATS being down
            raise BusUnavailable(
                reply.error or "the schedule is unavailable",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if reply.schedule is None:
            raise NotFound("no IG schedule is stored yet: PUT /ig/schedule stores one")
        return reply.schedule
