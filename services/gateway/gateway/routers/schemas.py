"""GET/POST /schemas, GET/PUT/DELETE /schemas/{id}: the schema repository (storage service).

A schema's identity is its `url|version` and package; its id is derived from that and made of
URL-unreserved characters only (`Patient-1c9b0f43a2d8e617`), so it needs no encoding in a path.
POST of an identity that exists is 409 unless `replace=true`; PUT /schemas/{id} replaces that
record (the body keeps its url, version and package)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fhirschema_bus.contracts import SchemaRecord
from gateway.bodies import JSON_TYPES, parse_document, read_body, require_media_type
from gateway.deps import ContainerDep, ConversionDep
from gateway.routers.validate import ERRORS
from gateway.security import require
from gateway.service.auth import SCHEMAS_READ, SCHEMAS_WRITE

router = APIRouter(prefix="/schemas", tags=["schemas"])


@router.get("", response_model=list[SchemaRecord], dependencies=[require(SCHEMAS_READ)])
async def list_schemas(
    c: ContainerDep,
    response: Response,
    url: str | None = None,
    type: str | None = None,
    package: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[SchemaRecord]:
    """One page of records; `X-Total-Count` says how many match in all."""
    found = await c.schemas.list(url=url, type=type, package=package, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(found.total)
    return found.items


async def _body(request: Request, c: ContainerDep) -> dict[str, Any]:
    require_media_type(request, JSON_TYPES)
    return parse_document(await read_body(request, c.settings.gateway.max_body_bytes))


def _record(record: SchemaRecord, status: int) -> Response:
    return Response(
        record.model_dump_json().encode(),
        status_code=status,
        media_type="application/json",
        headers={"Location": f"/schemas/{record.id}"},
    )


@router.post(
    "",
    status_code=201,
    responses={201: {"model": SchemaRecord}, 409: {"description": "exists"}, **ERRORS},
    dependencies=[require(SCHEMAS_WRITE)],
)
async def upload_schema(
    request: Request,
    c: ContainerDep,
    conversion: ConversionDep,
    package: str | None = None,
    replace: bool = False,
) -> Response:
    """A StructureDefinition (converted on upload) or a FHIRSchema (stored as is). A url|version
    (and package) that is already stored is a 409 naming its id, unless `replace=true`."""
    record = await conversion.upload(await _body(request, c), package=package, replace=replace)
    return _record(record, 201)


@router.get("/{schema_id:path}", dependencies=[require(SCHEMAS_READ)])
async def get_schema(schema_id: str, conversion: ConversionDep) -> Response:
    return Response(orjson.dumps(await conversion.get(schema_id)), media_type="application/json")


@router.put(
    "/{schema_id:path}",
    responses={
        200: {"model": SchemaRecord},
        404: {"description": "no such id"},
        409: {"description": "identity differs"},
        **ERRORS,
    },
    dependencies=[require(SCHEMAS_WRITE)],
)
async def replace_schema(
    schema_id: str, request: Request, c: ContainerDep, conversion: ConversionDep, package: str | None = None
) -> Response:
    record = await conversion.upload(await _body(request, c), schema_id=schema_id, package=package)
    return _record(record, 200)


@router.delete("/{schema_id:path}", status_code=204, dependencies=[require(SCHEMAS_WRITE)])
async def delete_schema(schema_id: str, conversion: ConversionDep) -> Response:
    await conversion.delete(schema_id)
    return Response(status_code=204)
