"""The schema index's durable copy in S3 (bucket_schemas), from which Redis' index is rebuilt.

Two kinds of objects hold it:
- `_index/records/<sha1(id)>.json`: one SchemaRecord (uploads, single puts: the gateway, the
  converter);
- `_index/chunks/<name>/<version>/<sha1(ids)>.json`: the records of one durable chunk of a
  package (ig-ingest's PutSchemas), a JSON array. One object for 64 schemas, not 64: the
  PUTs to S3 were half of what storing a package cost. The key comes from the chunk's ids, so a
  redelivery or a re-ingest of the same package overwrites the same object.

A record may be in both (a chunk, then a single put replacing one of its schemas): the copy
with the newest `updated` is the record. Deleting a record drops it from every copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from fhirschema_bus.contracts import SchemaRecord
from fhirschema_bus.object_store import AsyncObjectStore, ObjectNotFound
from storage_service import keys

S3Call = Callable[[Awaitable[Any]], Awaitable[Any]]  # maps the store's errors (repository._s3)
CONCURRENCY = 16


class DurableRecords:
    def __init__(self, store: AsyncObjectStore, bucket: str, s3: S3Call) -> None:
        self.store, self.bucket, self._s3 = store, bucket, s3

    async def all(self) -> list[SchemaRecord]:
        """Every record, the newest copy of each."""
        sem = asyncio.Semaphore(CONCURRENCY)

        async def load(key: str) -> list[SchemaRecord]:
            async with sem:
                raw = await self._s3(self._get(key))
            if raw is None:  # deleted since it was listed
                return []
            found = orjson.loads(raw)
            return [SchemaRecord.model_validate(r) for r in (found if isinstance(found, list) else [found])]

        listed = [
            *await self._s3(self.store.alist(self.bucket, keys.INDEX_RECORDS)),
            *await self._s3(self.store.alist(self.bucket, keys.INDEX_CHUNKS)),
        ]
        newest: dict[str, SchemaRecord] = {}
        for recs in await asyncio.gather(*(load(k) for k in listed)):
            for rec in recs:
                if rec.id not in newest or rec.updated > newest[rec.id].updated:
                    newest[rec.id] = rec
        return list(newest.values())

    async def put(self, rec: SchemaRecord) -> None:
        await self._s3(
            self.store.aput_bytes(self.bucket, keys.record_key(rec.id), rec.model_dump_json().encode())
        )

    async def put_chunk(self, recs: list[SchemaRecord]) -> None:
        """One object per package of the chunk's package records (any other: one object each;
        removing a package drops its chunks, and only its package records go with it)."""
        by_package: dict[str, list[SchemaRecord]] = {}
        for rec in recs:
            if rec.package and rec.origin == "package":
                by_package.setdefault(rec.package, []).append(rec)
        writes: list[Awaitable[Any]] = [
            self.put(r) for r in recs if not (r.package and r.origin == "package")
        ]
        for package, group in by_package.items():
            body = b"[" + b",".join(r.model_dump_json().encode() for r in group) + b"]"
            key = keys.chunk_key(package, [r.id for r in group])
            writes.append(self._s3(self.store.aput_bytes(self.bucket, key, body, "application/json")))
        await asyncio.gather(*writes)

    async def delete(self, rec: SchemaRecord) -> None:
        """Its own object, and out of every chunk of its package that holds it."""
        await self._s3(self.store.adelete(self.bucket, keys.record_key(rec.id)))
        if rec.package:
            await self._drop_from_chunks(rec.package, {rec.id})

    async def delete_package(self, package: str, recs: list[SchemaRecord]) -> None:
        """A package's chunks, and the own objects of its records."""
        sem = asyncio.Semaphore(CONCURRENCY)

        async def delete(key: str) -> None:
            async with sem:
                await self._s3(self.store.adelete(self.bucket, key))

        chunks = await self._s3(self.store.alist(self.bucket, keys.chunks_prefix(package)))
        await asyncio.gather(*(delete(k) for k in [*chunks, *(keys.record_key(r.id) for r in recs)]))

    async def _drop_from_chunks(self, package: str, ids: set[str]) -> None:
        for key in await self._s3(self.store.alist(self.bucket, keys.chunks_prefix(package))):
            raw = await self._s3(self._get(key))
            if raw is None:
                continue
            found = orjson.loads(raw)
            kept = [r for r in found if r.get("id") not in ids]
            if len(kept) == len(found):
                continue
            if kept:
                await self._s3(
                    self.store.aput_bytes(self.bucket, key, orjson.dumps(kept), "application/json")
                )
            else:
                await self._s3(self.store.adelete(self.bucket, key))

    async def _get(self, key: str) -> bytes | None:
        try:
            return await self.store.aget_bytes(self.bucket, key)
        except ObjectNotFound:
            return None
