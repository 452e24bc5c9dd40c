"""SchemaRepository over the storage service (fhirschema_bus.storage.StorageClient): storage's
faults become gateway errors with the same status (a 503 stays a 503 with Retry-After, another 5xx
of storage is a 502 here)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fhirschema_bus.contracts import PutSchema, SchemaList, SchemaQuery, SchemaRecord
from fhirschema_bus.storage import StorageClient, StorageFailed
from gateway.bus import Bus
from gateway.errors import GatewayError

TIMEOUT = 10.0
T = TypeVar("T")


class StorageError(GatewayError):
    status = 502


async def _call(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except StorageFailed as e:
        if e.status == 503:  # storage unavailable for now (index rebuilt from S3, S3 down): retry
            raise StorageError(f"storage: {e.message}", status=503, headers={"Retry-After": "2"}) from e
        raise StorageError(f"storage: {e.message}", status=e.status if e.status < 500 else 502) from e


class NatsSchemaRepository:
    def __init__(self, bus: Bus, timeout: float = TIMEOUT):
        self.client = StorageClient(bus.request, timeout)

    async def list(
        self, *, url: str | None, type: str | None, package: str | None, limit: int, offset: int
    ) -> SchemaList:
        query = SchemaQuery(url=url, type=type, package=package, limit=limit, offset=offset)
        return await _call(self.client.list(query))

    async def get(self, schema_id: str) -> dict[str, Any] | None:
        try:
            return (await _call(self.client.get_schema(SchemaQuery(id=schema_id)))).schema_
        except StorageError as e:
            if e.status == 404:
                return None
            raise

    async def upsert(
        self, schema: dict[str, Any], *, schema_id: str | None, package: str | None, replace: bool = False
    ) -> SchemaRecord:
        put = PutSchema(schema_=schema, package=package, id=schema_id, replace=replace)
        return await _call(self.client.upsert(put))

    async def delete(self, schema_id: str) -> bool:
        return (await _call(self.client.delete(schema_id))).deleted
