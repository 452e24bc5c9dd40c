"""The NATS adapter for ingest: schemas go to storage's durable subject, package registration is
a request/reply to storage (answers once the package is in the repository state)."""

from __future__ import annotations

import asyncio

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


class StorageUnavailable(RuntimeError):
    pass


class NatsSink:
    def __init__(self, nc: Client, js: JetStreamContext, timeout: float = 120.0) -> None:
        self.js = js
        self.storage = StorageClient(nats_request(nc), timeout)

    async def put_schemas(self, puts: list[tuple[PutSchema, str]]) -> None:
        """Published without waiting for each ack; returns once the stream acked them all (the
        first failure raised: the package fails, a rerun stores nothing twice)."""
        acks = []
        for put, msg_id in puts:
            body = put.model_dump_json(by_alias=True).encode()
            headers = outgoing({HEADER_MSG_ID: msg_id[:250]})
            acks.append(
                await self.js.publish_async(s.STORAGE_PUT_SCHEMA, body, headers=headers, wait_stall=30.0)
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
