"""The gateway's view of its collaborators: small Protocols, implemented by adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from fhirschema_bus.contracts import (
    DeadLetter,
    IngestedPackage,
    IngestJob,
    IngestRequest,
    IngestSchedule,
    JobKind,
    JobStatus,
    ObjectRef,
    Outcome,
    RegistryAnswer,
    RegistryQuery,
    ScheduleReply,
    SchemaList,
    SchemaRecord,
)


class JobStore(Protocol):
    """Implemented by `fhirschema_bus.jobs.JobStore`."""

    async def create(
        self, kind: JobKind, total: int = 0, *, job_id: str | None = None, detail: dict | None = None
    ) -> JobStatus: ...
    async def get(self, job_id: str) -> JobStatus | None: ...
    async def list_recent(self, limit: int = 50) -> list[JobStatus]: ...
    async def cancel(self, job_id: str) -> JobStatus: ...  # raises KeyError when unknown
    async def fail(self, job_id: str, error: str) -> JobStatus: ...
    async def record(self, job_id: str, index: int, outcome: Outcome) -> JobStatus | None: ...
    async def record_many(self, job_id: str, items: list[tuple[int, Outcome]]) -> list[JobStatus | None]: ...


class ObjectStore(Protocol):
    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> ObjectRef: ...
    async def get_bytes(self, ref: ObjectRef) -> bytes: ...
    def iter_lines(self, ref: ObjectRef) -> AsyncIterator[bytes]: ...
    async def ping(self) -> None: ...


class DeadLetters(Protocol):
    async def list(self, limit: int = 100, after: int = 0) -> list[DeadLetter]: ...
    async def get(self, seq: int) -> DeadLetter | None: ...
    async def replay(self, seq: int) -> DeadLetter | None: ...


class SchemaRepository(Protocol):
    async def list(
        self, *, url: str | None, type: str | None, package: str | None, limit: int, offset: int
    ) -> SchemaList: ...
    async def get(self, schema_id: str) -> dict[str, Any] | None: ...
    async def upsert(
        self, schema: dict[str, Any], *, schema_id: str | None, package: str | None, replace: bool = False
    ) -> SchemaRecord: ...
    async def delete(self, schema_id: str) -> bool: ...


class Probe(Protocol):
    async def __call__(self) -> None: ...


class IngestJobs(Protocol):
    """The IG pipeline's state and queue (adapters.ingest.NatsIngest): KV_INGEST and the
    ingest subject, written by ig-ingest."""

    async def queue(self, req: IngestRequest, job: IngestJob) -> None: ...  # recorded, then published
    async def job(self, job_id: str) -> IngestJob | None: ...
    async def jobs(self, limit: int) -> list[IngestJob]: ...
    async def packages(self) -> list[IngestedPackage]: ...


class RegistrySearch(Protocol):
    """ig-ingest's search of its configured registries (request/reply)."""

    async def search(self, query: RegistryQuery) -> RegistryAnswer: ...


class IngestSchedules(Protocol):
    """ig-ingest's IG schedule (request/reply INGEST_SCHEDULE_GET / _PUT): the stored schedule,
    or why it was refused (ScheduleReply.status)."""

    async def get_schedule(self) -> ScheduleReply: ...
    async def put_schedule(self, schedule: IngestSchedule) -> ScheduleReply: ...
