"""The NATS adapter for ingest: schemas go to storage's durable subject in chunks (PutSchemas),
package registration is a request/reply to storage (answers once the package is in the
repository state)."""

from __future__ import annotations

import asyncio
import hashlib

from nats.aio.client import Client
from nats.js import JetStreamContext

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    HEADER_MSG_ID,
    IndexPackage,
    PackageRemoved,
    PutSchema,
    RemovePackage,
    RepositoryState,
    SchemaQuery,
)
from fhirschema_bus.repository import read_state, repository_kv
from fhirschema_bus.storage import StorageClient, StorageFailed, nats_request
from fhirschema_bus.tracing import outgoing

ACK_TIMEOUT = 60.0  # for the acks of one chunk of puts
# A message's payload at most (NATS' default max_payload is 1 MiB; headers and the envelope aside).
MAX_CHUNK_BYTES = 900 * 1024


class StorageUnavailable(RuntimeError):
    pass


class NatsSink:
    def __init__(self, nc: Client, js: JetStreamContext, timeout: float = 120.0) -> None:
        self.js = js
        self.storage = StorageClient(nats_request(nc), timeout)

    async def put_schemas(self, puts: list[PutSchema], chunk_id: str) -> None:
        """One PutSchemas message per MAX_CHUNK_BYTES of puts, published without waiting for
        each ack; returns once the stream acked them all (the first failure raised: the package
        fails). Message ids `<chunk_id>|<n>`: the same puts cut the same way, so a rerun of the
        job is stored by the stream once."""
        acks = []
        for n, body in enumerate(chunk_bodies(puts)):
            headers = outgoing({HEADER_MSG_ID: _msg_id(f"{chunk_id}|{n}")})
            acks.append(
                await self.js.publish_async(s.STORAGE_PUT_SCHEMAS, body, headers=headers, wait_stall=30.0)
            )
        await asyncio.wait_for(asyncio.gather(*acks), ACK_TIMEOUT)

    async def index_package(self, req: IndexPackage) -> int:
        try:
            return (await self.storage.index_package(req)).resources
        except StorageFailed as e:
            raise StorageUnavailable(f"storage could not register {req.package}: {e.message}") from e

    async def stored_schemas(self, package: str) -> int:
        try:
            listed = await self.storage.list(SchemaQuery(package=package, origin="package", limit=1))
        except StorageFailed as e:
            raise StorageUnavailable(f"storage could not list {package}: {e.message}") from e
        return listed.total

    async def remove_package(self, req: RemovePackage) -> PackageRemoved:
        try:
            return await self.storage.remove_package(req)
        except StorageFailed as e:
            raise StorageUnavailable(f"storage could not remove {req.package}: {e.message}") from e

    async def repository(self) -> RepositoryState:
        state, _ = await read_state(await repository_kv(self.js))
        return state


def chunk_bodies(puts: list[PutSchema]) -> list[bytes]:
    """PutSchemas bodies of at most MAX_CHUNK_BYTES (a put bigger than that alone: the pipeline
    refuses schemas over the message limit before)."""
    bodies: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for put in puts:
        part = put.model_dump_json(by_alias=True).encode()
        if parts and size + len(part) + 1 > MAX_CHUNK_BYTES:
            bodies.append(_body(parts))
            parts, size = [], 0
        parts.append(part)
        size += len(part) + 1
    if parts:
        bodies.append(_body(parts))
    return bodies


def _body(parts: list[bytes]) -> bytes:
    # PutSchemas(puts=...) as JSON, from the puts already serialised (not dumped a second time).
    return b'{"puts":[' + b",".join(parts) + b"]}"


def _msg_id(text: str) -> str:
    return text if len(text) <= 200 else hashlib.sha256(text.encode()).hexdigest()
