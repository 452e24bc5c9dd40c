"""The FHIR-native entry points: `POST /$validate`, `POST /{type}/$validate` (the operation as the
FHIR specification defines it) and `GET /metadata` (a CapabilityStatement naming it).

The body is the resource, or a `Parameters` with `resource`, `profile` (repeatable) and `mode`;
the answer is the OperationOutcome, HTTP 200 for valid and invalid resources alike. It goes the
same way as `POST /validate`, so the verdict is the engine's (a requested profile that cannot be
resolved is an error, `not-found`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhirschema.jsoninput import ParsedInput
from fhirschema.validator.issues import Issue
from gateway import __version__
from gateway.bodies import (
    JSON_TYPES,
    parse_resource,
    read_body,
    requested,
    requested_packages,
    require_media_type,
)
from gateway.bootstrap import Container
from gateway.errors import FHIR_JSON, BadRequest
from gateway.routers.validate import ERRORS, OUTCOME
from gateway.security import SHED, require
from gateway.service.auth import VALIDATE

router = APIRouter(tags=["fhir"])

VALIDATE_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
MODES = ("create", "update")  # "delete" asks whether a deletion is allowed: no such rules here
BODY = "a FHIR resource, or a Parameters with resource, profile (repeatable) and mode"
PARAMETERS_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {"type": "object", "description": BODY}} for t in JSON_TYPES},
    },
}


@router.post(
    "/$validate",
    openapi_extra=PARAMETERS_OPENAPI,
    responses={200: OUTCOME, **ERRORS},
    dependencies=[require(VALIDATE), SHED],
)
async def validate_operation(request: Request) -> Response:
    """`$validate` at the system level: the resource may be of any type."""
    return await _validate(request, None)


@router.post(
    "/{type}/$validate",
    openapi_extra=PARAMETERS_OPENAPI,
    responses={200: OUTCOME, **ERRORS},
    dependencies=[require(VALIDATE), SHED],
)
async def validate_type_operation(request: Request, type: str) -> Response:
    """`$validate` at the type level: the resource must be of that type."""
    return await _validate(request, type)


async def _validate(request: Request, rtype: str | None) -> Response:
    c: Container = request.app.state.container
    require_media_type(request, JSON_TYPES)
    body = await read_body(request, c.settings.gateway.max_body_bytes)
    parsed, raw = parse_resource(body), body
    profiles = request.query_params.getlist("profile")
    if parsed.value.get("resourceType") == "Parameters":
        parsed, asked = _from_parameters(parsed)
        profiles += asked
        raw = b""  # the resource's own text is inside the Parameters
    resource: dict[str, Any] = parsed.value
    if rtype is not None and resource.get("resourceType") != rtype:
        found = resource.get("resourceType")
        raise BadRequest(
            f"POST /{rtype}/$validate got a {found!r} resource; use POST /{found}/$validate or /$validate"
        )
    result = await c.validation.validate_one(
        resource,
        raw or None,
        requested(profiles),
        issues=parsed.issues,
        packages=requested_packages(request.query_params.getlist("package")),
    )
    verdict = "failed" if result.failed else ("valid" if result.valid else "invalid")
    headers = {"X-Validation-Result": verdict, "X-Job-Id": result.job_id}
    return Response(orjson.dumps(result.outcome), media_type=FHIR_JSON, headers=headers)


def _from_parameters(parsed: ParsedInput) -> tuple[ParsedInput, list[str]]:
    """(the `resource` parameter with its own findings, the `profile` parameters)."""
    params = parsed.value.get("parameter")
    if not isinstance(params, list):
        raise BadRequest("Parameters.parameter must be an array")
    resources: list[tuple[int, Any]] = []
    profiles: list[str] = []
    for i, param in enumerate(params):
        if not isinstance(param, dict):
            raise BadRequest(f"Parameters.parameter[{i}] must be an object")
        name = param.get("name")
        if name == "resource":
            resources.append((i, param.get("resource")))
        elif name == "profile":
            value = param.get("valueUri", param.get("valueCanonical", param.get("valueString")))
            if not isinstance(value, str):
                raise BadRequest(f"Parameters.parameter[{i}] (profile) needs a valueUri or valueCanonical")
            profiles.append(value)
        elif name == "mode" and param.get("valueCode") not in MODES:
            raise BadRequest(
                f"mode {param.get('valueCode')!r} is not supported; use one of {', '.join(MODES)}"
            )
    if len(resources) != 1 or not isinstance(resources[0][1], dict):
        raise BadRequest("Parameters must hold exactly one 'resource' parameter with a resource")
    index, resource = resources[0]
    prefix: list[str | int] = ["parameter", index, "resource"]
    issues = []
    for issue in parsed.issues:
        if issue.path[:3] != prefix:
            raise BadRequest(f"the Parameters itself: {issue.message}")
        issues.append(
            Issue(
                issue.code,
                issue.severity,
                issue.path[3:],
                issue.message,
                line=issue.line,
                column=issue.column,
            )
        )
    return ParsedInput(resource, issues), profiles


@router.get("/metadata", responses={200: {"content": {FHIR_JSON: {}}, "description": "CapabilityStatement"}})
async def metadata() -> Response:
    """The CapabilityStatement: a FHIR R4 server whose operation is `$validate`."""
    operation = [{"name": "validate", "definition": VALIDATE_DEFINITION}]
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "FHIRSchema gateway", "version": __version__},
        "implementation": {"description": "FHIRSchema validation service"},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [{"mode": "server", "operation": operation}],
    }
    return Response(orjson.dumps(body), media_type=FHIR_JSON)
