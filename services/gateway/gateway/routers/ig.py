"""The IG pipeline (issue 11 §4, a fixed contract): POST /ig/process, GET /ig/status/{job},
GET /ig/status, GET /ig/registry, GET and PUT /ig/schedule; scope ig:admin (docs/security.md). The same operations over
NATS: docs/asyncapi.json."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from fhirschema_bus.contracts import (
    IngestAccepted,
    IngestJob,
    IngestOverview,
    IngestProcess,
    IngestSchedule,
    RegistryPackage,
    RegistryQuery,
    ScheduleView,
)
from gateway.deps import IngestDep
from gateway.routers.validate import ERRORS
from gateway.security import require
from gateway.service.auth import IG_ADMIN

router = APIRouter(prefix="/ig", tags=["implementation guides"], dependencies=[require(IG_ADMIN)])


@router.post("/process", status_code=202, response_model=IngestAccepted, responses=ERRORS)
async def process(body: IngestProcess, ingest: IngestDep, response: Response) -> IngestAccepted:
    """Ingest packages (`name`, `name#1.2.3`, `name#1.2.x`, `name#current`) and, unless
    `dependencies` is false, their dependency closure. `registry`: only this configured
    registry is asked (400 if it is not configured)."""
    accepted = await ingest.process(body)
    response.headers["Location"] = accepted.status
    return accepted


@router.get("/status", response_model=IngestOverview)
async def overview(ingest: IngestDep) -> IngestOverview:
    """The ingested packages and the recent ingest jobs (newest first)."""
    return await ingest.overview()


@router.get("/status/{job}", response_model=IngestJob, responses={404: {"description": "no such job"}})
async def job_status(job: str, ingest: IngestDep) -> IngestJob:
    """Every package of the job's closure, dependencies included, with its state and counts."""
    return await ingest.job(job)


@router.get(
    "/registry",
    response_model=list[RegistryPackage],
    responses={502: {"description": "no registry answered"}},
)
async def registry(
    ingest: IngestDep,
    name: Annotated[str | None, Query(max_length=214)] = None,
    canonical: Annotated[str | None, Query(max_length=2048)] = None,
    fhirversion: Annotated[str | None, Query(max_length=32)] = None,
) -> list[RegistryPackage]:
    """Packages of the configured registries (merged), each with its versions."""
    return await ingest.search(RegistryQuery(name=name, canonical=canonical, fhirversion=fhirversion))


SCHEDULE_ERRORS: dict[int | str, dict[str, str]] = {
    400: {"description": "a bad cron, time zone or mask (OperationOutcome naming the field)"},
    503: {"description": "NATS or ig-ingest unavailable (Retry-After)"},
}


@router.get(
    "/schedule",
    response_model=ScheduleView,
    responses={**SCHEDULE_ERRORS, 404: {"description": "no schedule stored yet"}},
)
async def get_schedule(ingest: IngestDep) -> ScheduleView:
    """The stored schedule with `next_run`, `last_run` and `last_job`."""
    return await ingest.schedule()


@router.put("/schedule", response_model=ScheduleView, responses=SCHEDULE_ERRORS)
async def put_schedule(body: IngestSchedule, ingest: IngestDep) -> ScheduleView:
    """Store the schedule (`cron`: five fields, or six with seconds last; `timezone`: an IANA
    name; `masks` such as `hl7.fhir.us.*`); every ig-ingest replica follows it within a poll."""
    return await ingest.put_schedule(body)
