"""POST /validate, POST /validate/batch, GET /validate/status/{job}, GET /validate/results/{job}."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from fhirschema_bus.contracts import JobKind, JobStatus
from gateway.bodies import (
    JSON_TYPES,
    NDJSON_TYPES,
    parse_items,
    parse_resource,
    read_body,
    requested,
    requested_packages,
    require_media_type,
)
from gateway.bootstrap import Container
from gateway.deps import ContainerDep, JobsDep, ValidationDep
from gateway.errors import FHIR_JSON, BadRequest, NotFound, PayloadTooLarge
from gateway.ports import JobStore
from gateway.security import SHED, authorize, require, security_requirement, shed
from gateway.service.auth import VALIDATE

router = APIRouter(prefix="/validate", tags=["validate"], dependencies=[require(VALIDATE)])
# POST /validate apart: the same check (security.authorize) without FastAPI's dependency
# resolution, which cost ~10% of the gateway's CPU per request (py-spy, bench/gateway_bench.py).
hot = APIRouter(prefix="/validate", tags=["validate"])

OUTCOME = {"content": {FHIR_JSON: {}}, "description": "OperationOutcome"}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "not JSON, or nested more than 200 levels deep (the OperationOutcome says where)"},
    413: {"description": "body too large"},
    401: {"description": "no credential, or one that is not valid (WWW-Authenticate says how)"},
    403: {"description": "the credential lacks the route's scope (named in the OperationOutcome)"},
    415: {"description": "unsupported content type"},
    429: {"description": "rate limit reached (Retry-After, RateLimit-* headers)"},
    503: {"description": "NATS unavailable"},
}
Profiles = Annotated[list[str], Query(alias="profile", description="profile canonical URL (repeatable)")]
Packages = Annotated[
    list[str],
    Query(alias="package", description="package context name#version (repeatable), as the CLI's --package"),
]


VALIDATE_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "profile",
            "in": "query",
            "required": False,
            "description": "profile canonical URL (repeatable); meta.profile is used as well",
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
        },
        {
            "name": "package",
            "in": "query",
            "required": False,
            "description": (
                "the package context, name#version (repeatable): those packages and their "
                "dependencies, as `fhirschema validate --package`; default: every registered package"
            ),
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
        },
        {
            "name": "timeout",
            "in": "query",
            "required": False,
            "description": "seconds to wait for the result (default: the gateway's sync timeout)",
            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {"type": "object", "description": "a FHIR resource"}} for t in JSON_TYPES},
    },
}


def _timeout(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"timeout must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 300:
        raise BadRequest("timeout must be > 0 and <= 300 seconds")
    return value


@hot.post(
    "",
    openapi_extra={**VALIDATE_OPENAPI, "security": security_requirement(VALIDATE)},
    responses={200: OUTCOME, 504: {"description": "no result in time; body has the job id"}, **ERRORS},
)
async def validate(request: Request) -> Response:
    """Validate one resource; answers the OperationOutcome (200 for valid and invalid resources,
    with `X-Validation-Result: valid|invalid|failed`)."""
    # The hot path: no FastAPI dependencies or parameter models, just the request.
    await authorize(request, VALIDATE)
    await shed(request)  # after the credential check, as SHED runs after require() elsewhere
    c: Container = request.app.state.container
    require_media_type(request, JSON_TYPES)
    raw = await read_body(request, c.settings.gateway.max_body_bytes)
    parsed = parse_resource(raw)
    query = request.query_params
    result = await c.validation.validate_one(
        parsed.value, raw, requested(query.getlist("profile")), _timeout(query.get("timeout")),
        parsed.issues, packages=requested_packages(query.getlist("package")),
    )  # fmt: skip
    verdict = "failed" if result.failed else ("valid" if result.valid else "invalid")
    return Response(
        orjson.dumps(result.outcome),
        media_type=FHIR_JSON,
        headers={"X-Validation-Result": verdict, "X-Job-Id": result.job_id},
    )


@router.post(
    "/batch", status_code=202, responses={202: {"description": "job accepted"}, **ERRORS}, dependencies=[SHED]
)
async def validate_batch(
    request: Request,
    c: ContainerDep,
    validation: ValidationDep,
    profile: Profiles = [],  # noqa: B006
    package: Packages = [],  # noqa: B006
) -> Response:
    """A Bundle, a JSON array or NDJSON body; every resource becomes one item of a job."""
    profiles, packages = requested(profile), requested_packages(package)  # before the body is read
    mt = require_media_type(request, JSON_TYPES | NDJSON_TYPES)
    items = parse_items(await read_body(request, c.settings.gateway.max_body_bytes), mt)
    limit = c.settings.gateway.max_batch_items
    if len(items) > limit:
        raise PayloadTooLarge(f"the batch holds {len(items)} resources; the limit is {limit}")
    detail = {"profiles": profiles, **({"packages": packages} if packages else {})}
    job = await validation.submit_batch(items, profiles, JobKind.VALIDATE, detail, packages=packages)
    return accepted(job, "/validate")


def accepted(job: JobStatus, base: str) -> Response:
    location = f"{base}/status/{job.id}"
    body = {"job": job.id, "state": job.state, "total": job.total, "status": location}
    body["results"] = f"{base}/results/{job.id}"
    return Response(
        orjson.dumps(body), status_code=202, media_type="application/json", headers={"Location": location}
    )


async def find_job(jobs: JobStore, job_id: str, kind: JobKind | None = None) -> JobStatus:
    job = await jobs.get(job_id)
    if job is None or (kind is not None and job.kind is not kind):
        raise NotFound(f"no {kind.value + ' ' if kind else ''}job {job_id!r}")
    return job


@router.get("/status/{job}", response_model=JobStatus)
async def validate_status(job: str, jobs: JobsDep) -> JobStatus:
    """State, total, done, valid, invalid, failed, timestamps."""
    return await find_job(jobs, job, JobKind.VALIDATE)


@router.get(
    "/results/{job}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one result per line"}},
)
async def validate_results(
    job: str,
    jobs: JobsDep,
    validation: ValidationDep,
    wait: Annotated[float, Query(ge=0, le=600, description="seconds to wait for missing results")] = 0.0,
) -> StreamingResponse:
    """NDJSON lines {"index", "source", "valid", "outcome"}; what is there now, or (wait > 0) the
    results as they arrive until the job is complete."""
    status = await find_job(jobs, job, JobKind.VALIDATE)
    lines = validation.results(status, wait)
    return StreamingResponse(lines, media_type="application/x-ndjson", headers={"X-Job-State": status.state})
