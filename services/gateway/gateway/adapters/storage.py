"""SchemaRepository over the storage service's core NATS request/reply subjects.

Replies are JSON; an error reply is `{"error": "...", "status": 404}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import PutSchema, SchemaQuery, SchemaRecord
from gateway.bus import Bus
from gateway.errors import GatewayError

TIMEOUT = 10.0


class StorageError(GatewayError):
    status = 502


class NatsSchemaRepository:
    def __init__(self, bus: Bus, timeout: float = TIMEOUT):
        self.bus = bus
        self.timeout = timeout

    async def _call(self, subject: str, payload: bytes) -> Any:
        data = orjson.loads(await self.bus.request(subject, payload, self.timeout))
        if isinstance(data, dict) and "error" in data and ("status" in data or len(data) == 1):
            status = int(data.get("status") or 502)
            if status == 404:
                return None
            raise StorageError(f"storage: {data['error']}", status=status if status < 500 else 502)
        return data

    async def list(
        self, *, url: str | None, type: str | None, package: str | None, limit: int, offset: int
    ) -> list[SchemaRecord]:
        query = SchemaQuery(url=url, type=type, package=package, limit=limit, offset=offset)
        data = await self._call(s.STORAGE_LIST, query.model_dump_json(exclude_none=True).encode())
        if isinstance(data, dict):  # {"items": [...]} or {"schemas": [...]}
            data = data.get("items", data.get("schemas", data.get("records", [])))
        return [SchemaRecord.model_validate(r) for r in data or []]

    async def get(self, schema_id: str) -> dict[str, Any] | None:
        query = SchemaQuery(id=schema_id)
        data = await self._call(s.STORAGE_GET_SCHEMA, query.model_dump_json(exclude_none=True).encode())
        return data if isinstance(data, dict) else None

    async def upsert(
        self, schema: dict[str, Any], *, schema_id: str | None, package: str | None
    ) -> SchemaRecord:
        put = PutSchema(schema_=schema, package=package, id=schema_id)
        data = await self._call(
            s.STORAGE_UPSERT, put.model_dump_json(by_alias=True, exclude_none=True).encode()
        )
        if data is None:
            raise StorageError("storage did not store the schema")
        return SchemaRecord.model_validate(data.get("record", data))

    async def delete(self, schema_id: str) -> bool:
        query = SchemaQuery(id=schema_id)
        data = await self._call(s.STORAGE_DELETE, query.model_dump_json(exclude_none=True).encode())
        return bool(data) and bool(data.get("deleted", True) if isinstance(data, dict) else data)
