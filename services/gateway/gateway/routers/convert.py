"""POST /convert/structuredefinition, POST /convert/batch, GET /convert/status/{job}, GET /convert/formats."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from fhirschema_bus.contracts import JobKind, JobStatus
from gateway.bodies import (
    JSON_TYPES,
    NDJSON_TYPES,
    parse_document,
    parse_items,
    read_body,
    require_media_type,
)
from gateway.deps import ContainerDep, ConversionDep, JobsDep, ValidationDep
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.routers.validate import ERRORS, accepted, find_job
from gateway.security import require
from gateway.service.auth import CONVERT
from gateway.service.conversion import FORMATS

router = APIRouter(prefix="/convert", tags=["convert"], dependencies=[require(CONVERT)])


@router.post("/structuredefinition", responses={422: {"description": "conversion failed"}, **ERRORS})
async def convert_structuredefinition(
    request: Request,
    c: ContainerDep,
    conversion: ConversionDep,
    store: Annotated[bool, Query(description="also store the schema in the repository")] = False,
    package: Annotated[str | None, Query(description="name#version provenance when storing")] = None,
    timeout: Annotated[float | None, Query(gt=0, le=300)] = None,
) -> Response:
    """One StructureDefinition -> its FHIRSchema (by the converter service)."""
    require_media_type(request, JSON_TYPES)
    sd = parse_document(await read_body(request, c.settings.gateway.max_body_bytes))
    result = await conversion.convert(sd, store=store, package=package, timeout=timeout)
    headers = {}
    if store:  # the converter hands the schema to the storage service over the work stream
        stored = result.get("stored")
        headers["X-Schema-Stored"] = f"{stored['bucket']}/{stored['key']}" if stored else "queued"
    return Response(orjson.dumps(result.get("schema") or {}), media_type="application/json", headers=headers)


@router.post("/batch", status_code=202, responses=ERRORS)
async def convert_batch(
    request: Request,
    c: ContainerDep,
    validation: ValidationDep,
    store: bool = False,
    package: str | None = None,
) -> Response:
    """A Bundle, array or NDJSON of StructureDefinitions -> a conversion job."""
    mt = require_media_type(request, JSON_TYPES | NDJSON_TYPES)
    items = parse_items(await read_body(request, c.settings.gateway.max_body_bytes), mt)
    for item in items:  # nothing would report what became of such an item: refused
        findings = (item.failed.issues if item.failed is not None else []) + list(item.issues)
        if findings:
            raise BadRequest(f"item {item.source}: " + "; ".join(i.message for i in findings))
    if len(items) > c.settings.gateway.max_batch_items:
        raise PayloadTooLarge(
            f"the batch holds {len(items)} items; the limit is {c.settings.gateway.max_batch_items}"
        )
    job = await validation.submit_batch(items, [], JobKind.CONVERT, {"store": store, "package": package})
    return accepted(job, "/convert")


@router.get("/status/{job}", response_model=JobStatus)
async def convert_status(job: str, jobs: JobsDep) -> JobStatus:
    return await find_job(jobs, job, JobKind.CONVERT)


@router.get(
    "/results/{job}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one result per line"}},
)
async def convert_results(
    job: str,
    jobs: JobsDep,
    validation: ValidationDep,
    wait: Annotated[float, Query(ge=0, le=600, description="seconds to wait for missing results")] = 0.0,
) -> StreamingResponse:
    """NDJSON lines {"index", "schema", "error", "stored"} of a conversion job (as
    GET /validate/results)."""
    status = await find_job(jobs, job, JobKind.CONVERT)
    lines = validation.results(status, wait)
    return StreamingResponse(lines, media_type="application/x-ndjson", headers={"X-Job-State": status.state})


@router.get("/formats")
async def convert_formats() -> dict[str, Any]:
    """Supported inputs and outputs."""
    return FORMATS
