"""GET /jobs (recent jobs), DELETE /jobs/{id} (cancel)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fhirschema_bus.contracts import JobKind, JobState, JobStatus
from gateway.deps import JobsDep
from gateway.routers.validate import find_job
from gateway.security import require
from gateway.service.auth import JOBS_ADMIN

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[require(JOBS_ADMIN)])


@router.get("", response_model=list[JobStatus])
async def list_jobs(
    jobs: JobsDep,
    kind: JobKind | None = None,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[JobStatus]:
    """Most recent first."""
    found = await jobs.list_recent(limit if kind is None and state is None else 10_000)
    found = [j for j in found if (kind is None or j.kind is kind) and (state is None or j.state is state)]
    return found[:limit]


@router.get("/{job_id}", response_model=JobStatus)
async def get_job(job_id: str, jobs: JobsDep) -> JobStatus:
    return await find_job(jobs, job_id)


@router.delete("/{job_id}", response_model=JobStatus)
async def cancel_job(job_id: str, jobs: JobsDep) -> JobStatus:
    """Cancel: the job goes to state cancelled; workers skip its remaining items."""
    await find_job(jobs, job_id)
    return await jobs.cancel(job_id)
