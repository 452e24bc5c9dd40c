"""The service layer: one function per NATS interface, request dict in, reply out.

Replies are JSON; failures are `{"error": "...", "status": <http-like code>}` (400 bad request,
404 not found, 503 S3 unavailable), never a silent timeout.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fhirschema_bus.contracts import IndexPackage, PutSchema, SchemaQuery
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


async def _guard(coro: Any) -> Any:
    try:
        return await coro
    except StorageError as e:
        if e.status >= 500:
            log.warning("storage error: %s", e)
        return e.reply()


class StorageHandlers:
    def __init__(self, repo: SchemaRepository) -> None:
        self.repo = repo

    async def get_schema(self, body: Any) -> bytes | dict[str, Any]:
        async def run() -> bytes:
            return await self.repo.get_schema(parse(SchemaQuery, body))

        return await _guard(run())

    async def get_resource(self, body: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            url = parse(SchemaQuery, body).url
            if not url:
                raise BadRequest("give 'url'")
            return await self.repo.get_resource(url)

        return await _guard(run())

    async def list(self, body: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            items, total = await self.repo.list(parse(SchemaQuery, body))
            return {"items": [i.model_dump(mode="json") for i in items], "total": total}

        return await _guard(run())

    async def delete(self, body: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            q = parse(SchemaQuery, body)
            if not q.id:
                raise BadRequest("give 'id'")
            return {"deleted": await self.repo.delete(q.id)}

        return await _guard(run())

    async def upsert(self, body: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            return (await self.repo.upsert(parse(PutSchema, body))).model_dump(mode="json")

        return await _guard(run())

    async def index_package(self, body: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            return {"resources": await self.repo.index_package(parse(IndexPackage, body))}

        return await _guard(run())
