"""The storage service's request/reply API, defined once for every caller and for storage itself.

Storage answers every request (`STORAGE_*` subjects) with a `StorageReply` envelope: a `result`
(the reply model of that request) or an `error` (`StorageFault`: status and message).
`encode_result` / `encode_fault` write it (storage_service), `StorageClient` reads it (gateway,
validator, ig-ingest): a fault becomes `StorageFailed`, a result the typed reply model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    IndexPackage,
    PackageIndexed,
    PackageRemoved,
    PutSchema,
    RemovePackage,
    SchemaDeleted,
    SchemaDocument,
    SchemaList,
    SchemaQuery,
    SchemaRecord,
    StorageFault,
    StorageReply,
)
from fhirschema_bus.tracing import outgoing

M = TypeVar("M", bound=BaseModel)
Request = Callable[[str, bytes, float], Awaitable[bytes]]  # (subject, payload, timeout) -> reply body
TIMEOUT = 10.0


class StorageFailed(Exception):
    """Storage answered with a fault, or did not answer at all (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def encode_result(result: BaseModel) -> bytes:
    return b'{"result":' + result.model_dump_json(by_alias=True).encode() + b"}"


def encode_fault(status: int, message: str) -> bytes:
    return (
        StorageReply(error=StorageFault(status=status, message=message))
        .model_dump_json(exclude_none=True)
        .encode()
    )


def decode(data: bytes, model: type[M]) -> M:
    """The reply model in a StorageReply, or StorageFailed with storage's fault."""
    try:
        reply = StorageReply.model_validate_json(data)
        if reply.error is not None:
            raise StorageFailed(reply.error.status, reply.error.message)
        if reply.result is None:
            raise StorageFailed(502, "storage replied with neither a result nor an error")
        return model.model_validate(reply.result)
    except ValidationError as e:
        raise StorageFailed(502, f"storage replied with something that is not a {model.__name__}: {e}") from e


def nats_request(nc: Client) -> Request:
    """A Request over a plain nats-py client: no answer is a StorageFailed 503."""

    async def request(subject: str, payload: bytes, timeout: float) -> bytes:
        try:
            return (await nc.request(subject, payload, timeout=timeout, headers=outgoing())).data
        except nats.errors.NoRespondersError as e:
            raise StorageFailed(503, f"no storage service answers on {subject}: is it running?") from e
        except (TimeoutError, nats.errors.Error) as e:
            raise StorageFailed(503, f"storage did not answer on {subject}: {e or type(e).__name__}") from e

    return request


class StorageClient:
    def __init__(self, request: Request, timeout: float = TIMEOUT) -> None:
        self._request = request
        self.timeout = timeout

    async def _call(self, subject: str, body: BaseModel, model: type[M], timeout: float | None = None) -> M:
        payload = body.model_dump_json(by_alias=True, exclude_none=True).encode()
        return decode(await self._request(subject, payload, timeout or self.timeout), model)

    async def get_schema(self, query: SchemaQuery) -> SchemaDocument:
        return await self._call(s.STORAGE_GET_SCHEMA, query, SchemaDocument)

    async def list(self, query: SchemaQuery) -> SchemaList:
        return await self._call(s.STORAGE_LIST, query, SchemaList)

    async def upsert(self, put: PutSchema) -> SchemaRecord:
        return await self._call(s.STORAGE_UPSERT, put, SchemaRecord)

    async def delete(self, schema_id: str) -> SchemaDeleted:
        return await self._call(s.STORAGE_DELETE, SchemaQuery(id=schema_id), SchemaDeleted)

    async def index_package(self, req: IndexPackage, timeout: float | None = None) -> PackageIndexed:
        return await self._call(s.STORAGE_INDEX_PACKAGE, req, PackageIndexed, timeout)

    async def remove_package(self, req: RemovePackage, timeout: float | None = None) -> PackageRemoved:
        return await self._call(s.STORAGE_REMOVE_PACKAGE, req, PackageRemoved, timeout)
