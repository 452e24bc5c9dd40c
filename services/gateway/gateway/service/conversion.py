"""Conversion use cases (StructureDefinition -> FHIRSchema by the converter service) and schema
uploads (converted on upload, or stored as is) through the storage service."""

from __future__ import annotations

from typing import Any

import orjson

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import SchemaRecord
from gateway.errors import BadRequest, NotFound, Timeout, Unprocessable
from gateway.ports import SchemaRepository
from gateway.service.dispatch import Dispatcher, ReplyTimeout, new_job_id

FORMATS = {
    "inputs": [
        {"format": "StructureDefinition", "media_types": ["application/json", "application/fhir+json"]},
        {
            "format": "Bundle of StructureDefinitions",
            "media_types": ["application/json", "application/fhir+json"],
        },
        {"format": "JSON array of StructureDefinitions", "media_types": ["application/json"]},
        {"format": "NDJSON of StructureDefinitions", "media_types": ["application/x-ndjson"]},
    ],
    "outputs": [{"format": "FHIRSchema", "media_types": ["application/json"]}],
    "fhir_versions": ["4.0.1"],
}


def is_structure_definition(res: dict[str, Any]) -> bool:
    return res.get("resourceType") == "StructureDefinition"


def is_fhirschema(res: dict[str, Any]) -> bool:
    return (
        "resourceType" not in res and isinstance(res.get("url"), str) and ("elements" in res or "kind" in res)
    )


class ConversionService:
    def __init__(self, dispatch: Dispatcher, schemas: SchemaRepository, timeout: float):
        self.d = dispatch
        self.schemas = schemas
        self.timeout = timeout

    async def convert(
        self,
        sd: dict[str, Any],
        *,
        store: bool = False,
        package: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The converter's ConvertResult as a dict ("schema", "stored"); 422 on conversion errors."""
        if not is_structure_definition(sd):
            raise BadRequest("expected a StructureDefinition (resourceType 'StructureDefinition')")
        job_id = new_job_id()
        kind, payload = await self.d.payload(job_id, 0, sd)
        key = "structure_definition" if kind == "inline" else "structure_definition_ref"
        msg = {"job_id": job_id, key: payload, "store": store, "package": package}
        msg["reply_to"] = self.d.reply_to(job_id)
        try:
            data = await self.d.call(s.CONVERT_ONE, job_id, orjson.dumps(msg), timeout or self.timeout)
        except ReplyTimeout as t:
            self.d.settle(t)
            raise Timeout(
                f"no conversion result within {timeout or self.timeout:g} s", extra={"job": job_id}
            ) from None
        result = orjson.loads(data)
        if result.get("error"):
            raise Unprocessable(f"conversion failed: {result['error']}")
        return result

    # --- the schema repository --------------------------------------------------------------

    async def upload(
        self,
        body: dict[str, Any],
        *,
        schema_id: str | None = None,
        package: str | None = None,
        replace: bool = False,
    ) -> SchemaRecord:
        if is_structure_definition(body):
            schema = (await self.convert(body))["schema"]
        elif is_fhirschema(body):
            schema = body
        else:
            raise BadRequest(
                "expected a StructureDefinition or a FHIRSchema (an object with url and elements)"
            )
        return await self.schemas.upsert(schema, schema_id=schema_id, package=package, replace=replace)

    async def get(self, schema_id: str) -> dict[str, Any]:
        found = await self.schemas.get(schema_id)
        if found is None:
            raise NotFound(f"no schema with id {schema_id!r}")
        return found

    async def delete(self, schema_id: str) -> None:
        if not await self.schemas.delete(schema_id):
            raise NotFound(f"no schema with id {schema_id!r}")
