"""The schema repository: FHIRSchemas, their index and package resources, on S3 + the index.

S3 layout (bucket_schemas): `<package>/<version>/<name>.json` (uploads under `_uploads/`), one
index object per record under `_index/records/` and one per package under `_index/resources/`.
Tarballs live in bucket_packages; raw canonical resources are read from them on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import orjson

from fhirschema.ids import Canonical, version_key
from fhirschema.package import Package, load_tgz
from fhirschema_bus.contracts import IndexPackage, ObjectRef, PutSchema, SchemaQuery, SchemaRecord, now
from fhirschema_bus.object_store import ObjectNotFound, ObjectStore, ObjectStoreError, ObjectStoreUnavailable
from fhirschema_bus.settings import S3Settings
from storage_service import keys
from storage_service.index import SchemaIndex

log = logging.getLogger("storage.repository")


class StorageError(Exception):
    status = 500

    def reply(self) -> dict[str, Any]:
        return {"error": str(self), "status": self.status}


class NotFound(StorageError):
    status = 404


class BadRequest(StorageError):
    status = 400


class Unavailable(StorageError):
    status = 503


class SchemaRepository:
    def __init__(
        self, store: ObjectStore, index: SchemaIndex, s3: S3Settings, packages_cached: int = 4
    ) -> None:
        self.store = store
        self.index = index
        self.bucket = s3.bucket_schemas
        self._packages: OrderedDict[str, tuple[Package, dict[str, Any]]] = OrderedDict()
        self._packages_max = packages_cached
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Create the buckets; load the index from Redis, or rebuild it from S3."""
        await self.store.aensure_buckets()
        if await self.index.loaded():
            await self.index.load_from_redis()
            return
        sem = asyncio.Semaphore(16)

        async def load(key: str) -> Any:
            async with sem:
                return await self.store.aget_json(self.bucket, key)

        recs = await asyncio.gather(
            *(load(k) for k in await self.store.alist(self.bucket, keys.INDEX_RECORDS))
        )
        for raw in recs:
            await self.index.put(SchemaRecord.model_validate(raw))
        for key in await self.store.alist(self.bucket, keys.INDEX_RESOURCES):
            await self.index.put_resources((await load(key))["entries"])
        await self.index.mark_loaded()
        log.info("index rebuilt from S3: %d schemas", len(recs))

    # --- schemas ----------------------------------------------------------------------------

    async def upsert(self, put: PutSchema) -> SchemaRecord:
        schema = put.schema_
        url = schema.get("url")
        if not isinstance(url, str) or not url:
            raise BadRequest("schema has no 'url'")
        rid = keys.schema_id(schema, put.package, put.id)
        existing = await self.index.get(rid)
        key = existing.object.key if existing else keys.schema_key(rid, put.package)
        raw = orjson.dumps(schema)
        rec = SchemaRecord(
            id=rid, url=url, version=_str(schema.get("version")), type=_str(schema.get("type")),
            kind=_str(schema.get("kind")), derivation=_str(schema.get("derivation")),
            package=put.package or _str(schema.get("package_id")),
            object=ObjectRef(bucket=self.bucket, key=key), updated=now(),
        )  # fmt: skip
        await self._s3(self.store.aput_bytes(self.bucket, key, raw, "application/json"))
        await self._s3(
            self.store.aput_bytes(self.bucket, keys.record_key(rid), rec.model_dump_json().encode())
        )
        if existing and (existing.url, existing.version) != (rec.url, rec.version):
            await self.index.remove(existing)
        await self.index.put(rec)
        await self.index.cache_schema(rid, raw)
        return rec

    async def find(self, q: SchemaQuery) -> SchemaRecord:
        rid = q.id
        if rid is None and q.url:
            rid = await self.index.resolve(str(Canonical.parse(q.url)))
        if rid is None:
            if not (q.id or q.url):
                raise BadRequest("give 'id' or 'url'")
            raise NotFound(f"no schema for {q.id or q.url}")
        rec = await self.index.get(rid)
        if rec is None:
            raise NotFound(f"no schema with id {rid}")
        return rec

    async def get_schema(self, q: SchemaQuery) -> bytes:
        rec = await self.find(q)
        raw = await self.index.cached_schema(rec.id)
        if raw is None:
            try:
                raw = await self._s3(self.store.aget_bytes(rec.object.bucket, rec.object.key))
            except NotFound:
                raise NotFound(f"schema {rec.id} is indexed but its object is missing") from None
            await self.index.cache_schema(rec.id, raw)
        return raw

    async def list(self, q: SchemaQuery) -> tuple[list[SchemaRecord], int]:
        recs = await self.index.all()
        if q.url:
            url, _, version = q.url.partition("|")
            recs = [r for r in recs if r.url == url and (not version or r.version == version)]
        if q.type:
            recs = [r for r in recs if r.type == q.type]
        if q.package:
            recs = [r for r in recs if r.package == q.package or (r.package or "").split("#")[0] == q.package]
        recs.sort(key=lambda r: (r.package or "", r.id))
        return recs[q.offset : q.offset + max(q.limit, 0)], len(recs)

    async def delete(self, rid: str) -> bool:
        rec = await self.index.get(rid)
        if rec is None:
            return False
        await self._s3(self.store.adelete(self.bucket, keys.record_key(rid)))
        await self._s3(self.store.adelete(rec.object.bucket, rec.object.key))
        await self.index.remove(rec)
        return True

    # --- raw canonical resources ------------------------------------------------------------

    async def index_package(self, req: IndexPackage) -> int:
        pkg, _ = await self._package(req.package, req.object)
        entries: dict[str, dict[str, Any]] = {}
        latest: dict[str, str | None] = {}
        for e in pkg.entries:
            if not e.url:
                continue
            ref = {
                "package": req.package,
                "bucket": req.object.bucket,
                "key": req.object.key,
                "file": e.filename,
            }
            entries[f"{e.url}|{e.version or ''}"] = ref
            if e.url not in latest or version_key(e.version) >= version_key(latest[e.url]):
                entries[e.url], latest[e.url] = ref, e.version
        doc = {"package": req.package, "object": req.object.model_dump(), "entries": entries}
        await self._s3(self.store.aput_json(self.bucket, keys.resources_key(req.package), doc))
        await self.index.put_resources(entries)
        return len(latest)

    async def get_resource(self, url: str) -> dict[str, Any]:
        ref = await self.index.resource(url)
        if ref is None:
            raise NotFound(f"no resource with url {url}")
        _, by_file = await self._package(ref["package"], ObjectRef(bucket=ref["bucket"], key=ref["key"]))
        pkg, _ = self._packages[ref["package"]]
        return await asyncio.to_thread(pkg.read, by_file[ref["file"]])

    async def _package(self, name: str, obj: ObjectRef) -> tuple[Package, dict[str, Any]]:
        async with self._lock:
            if name in self._packages:
                self._packages.move_to_end(name)
                return self._packages[name]
            data = await self._s3(self.store.aget_bytes(obj.bucket, obj.key))
            pkg = await asyncio.to_thread(load_tgz, obj.key, data)
            self._packages[name] = (pkg, {e.filename: e for e in pkg.entries})
            while len(self._packages) > self._packages_max:
                self._packages.popitem(last=False)
            return self._packages[name]

    @staticmethod
    async def _s3(aw: Any) -> Any:
        try:
            return await aw
        except ObjectNotFound as e:
            raise NotFound(str(e)) from e
        except ObjectStoreUnavailable as e:
            raise Unavailable(str(e)) from e
        except ObjectStoreError as e:
            raise StorageError(str(e)) from e


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None
