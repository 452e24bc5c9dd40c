"""The service layer: one function per request/reply subject, request bytes in, reply bytes out.

Every reply is a StorageReply envelope (fhirschema_bus.storage): the reply model, or a fault
(400 bad request, 404 not found, 409 conflict, 503 S3 unavailable or the index being rebuilt) — never a silent timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fhirschema_bus.contracts import (
    IndexPackage,
    PutSchema,
    RemovePackage,
    SchemaDeleted,
    SchemaList,
    SchemaQuery,
)
from fhirschema_bus.storage import encode_fault, encode_result
from storage_service.index import IndexUnavailable
from storage_service.repository import BadRequest, SchemaRepository, StorageError

log = logging.getLogger("storage.handlers")
M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: Any) -> M:
    try:
        if isinstance(body, bytes | str):
            return model.model_validate_json(body or b"{}")
        return model.model_validate(body if body is not None else {})
    except ValidationError as e:
        raise BadRequest(f"invalid {model.__name__}: {e.errors(include_url=False)[:3]}") from e


async def _reply(run: Callable[[], Awaitable[BaseModel]]) -> bytes:
    try:
        return encode_result(await run())
    except StorageError as e:
        if e.status >= 500:
            log.warning("storage error: %s", e)
        return encode_fault(e.status, str(e))
    except IndexUnavailable as e:
        return encode_fault(503, str(e))


class StorageHandlers:
    def __init__(self, repo: SchemaRepository) -> None:
        self.repo = repo

    async def get_schema(self, body: Any) -> bytes:
        return await _reply(lambda: self.repo.get_schema(parse(SchemaQuery, body)))

    async def list(self, body: Any) -> bytes:
        async def run() -> SchemaList:
            items, total = await self.repo.list(parse(SchemaQuery, body))
            return SchemaList(items=items, total=total)

        return await _reply(run)

    async def delete(self, body: Any) -> bytes:
        async def run() -> SchemaDeleted:
            q = parse(SchemaQuery, body)
            if not q.id:
                raise BadRequest("give 'id'")
            return SchemaDeleted(id=q.id, deleted=await self.repo.delete(q.id))

        return await _reply(run)

    async def upsert(self, body: Any) -> bytes:
        return await _reply(lambda: self.repo.upsert(parse(PutSchema, body)))

    async def index_package(self, body: Any) -> bytes:
        return await _reply(lambda: self.repo.index_package(parse(IndexPackage, body)))

    async def remove_package(self, body: Any) -> bytes:
        return await _reply(lambda: self.repo.remove_package(parse(RemovePackage, body)))
