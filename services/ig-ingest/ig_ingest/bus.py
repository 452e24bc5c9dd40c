"""The NATS adapter for ingest: schemas go to storage's durable subject, package indexing is a
request/reply to storage (answers only when the index is written)."""

from __future__ import annotations

import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_MSG_ID, IndexPackage, PutSchema


class StorageUnavailable(RuntimeError):
    pass


class NatsSink:
    def __init__(self, nc: Client, js: JetStreamContext, timeout: float = 120.0) -> None:
        self.nc = nc
        self.js = js
        self.timeout = timeout

    async def put_schema(self, put: PutSchema, msg_id: str) -> None:
        body = put.model_dump_json(by_alias=True).encode()
        await self.js.publish(s.STORAGE_PUT_SCHEMA, body, headers={HEADER_MSG_ID: msg_id[:250]})

    async def index_package(self, req: IndexPackage) -> int:
        try:
            msg = await self.nc.request(
                s.STORAGE_INDEX_PACKAGE, req.model_dump_json().encode(), timeout=self.timeout
            )
        except Exception as e:  # no responders / timeout: the storage service is not there
            raise StorageUnavailable(f"storage did not index {req.package}: {type(e).__name__}: {e}") from e
        reply = orjson.loads(msg.data)
        if "error" in reply:
            raise StorageUnavailable(f"storage could not index {req.package}: {reply['error']}")
        return int(reply["resources"])
