"""The IG pipeline's state and queue on NATS: KV_INGEST (fhirschema_bus.ingest_status, the same
records ig-ingest writes), the ingest subject (JetStream, de-duplicated by the job id) and
ig-ingest's registry search and schedule (core NATS request/reply)."""

from __future__ import annotations

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    IngestedPackage,
    IngestJob,
    IngestRequest,
    IngestSchedule,
    RegistryAnswer,
    RegistryQuery,
    ScheduleGet,
    ScheduleReply,
)
from fhirschema_bus.ingest_status import IngestStatus
from gateway.bus import Bus

# A search asks every configured registry for its catalog and up to 50 listings.
SEARCH_TIMEOUT = 60.0
# The schedule is one KV read or write at ig-ingest.
SCHEDULE_TIMEOUT = 10.0


class NatsIngest:
    def __init__(self, bus: Bus, search_timeout: float = SEARCH_TIMEOUT) -> None:
        self.bus = bus
        self.search_timeout = search_timeout
        self._status: IngestStatus | None = None
        self._nc: object = None

    async def status(self) -> IngestStatus:
        js = self.bus.js  # 503 while NATS is down
        if self._status is None or self._nc is not self.bus.nc:
            self._status = await IngestStatus.open(js)
            self._nc = self.bus.nc
        return self._status

    async def queue(self, req: IngestRequest, job: IngestJob) -> None:
        await (await self.status()).put_job(job)
        await self.bus.publish(s.INGEST_PACKAGE, req.model_dump_json().encode(), msg_id=req.job_id)

    async def job(self, job_id: str) -> IngestJob | None:
        return await (await self.status()).job(job_id)

    async def jobs(self, limit: int) -> list[IngestJob]:
        return await (await self.status()).jobs(limit)

    async def packages(self) -> list[IngestedPackage]:
        return await (await self.status()).packages()

    async def search(self, query: RegistryQuery) -> RegistryAnswer:
        data = await self.bus.request(
            s.INGEST_REGISTRY, query.model_dump_json().encode(), self.search_timeout
        )
        return RegistryAnswer.model_validate_json(data)

    async def get_schedule(self) -> ScheduleReply:
        data = await self.bus.request(
            s.INGEST_SCHEDULE_GET, ScheduleGet().model_dump_json().encode(), SCHEDULE_TIMEOUT
        )
        return ScheduleReply.model_validate_json(data)

    async def put_schedule(self, schedule: IngestSchedule) -> ScheduleReply:
        data = await self.bus.request(
            s.INGEST_SCHEDULE_PUT, schedule.model_dump_json().encode(), SCHEDULE_TIMEOUT
        )
        return ScheduleReply.model_validate_json(data)
