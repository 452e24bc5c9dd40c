"""The schema repository: FHIRSchemas, their index and package resources, on S3 + the index,
and the repository state (the registered packages and the uploads' revision, state.py).

S3 layout (bucket_schemas): `<package>/<version>/<name>.json` (uploads under `_uploads/`), one
index object per record under `_index/records/` and one per package under `_index/resources/`.
Tarballs live in bucket_packages; raw canonical resources are read from them on demand.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Any

import orjson

from fhirschema.ids import Canonical, version_key
from fhirschema.package import Package, PackageError, load_tgz
from fhirschema_bus.contracts import (
    IndexPackage,
    ObjectRef,
    PackageIndexed,
    PackageRemoved,
    PutSchema,
    RemovePackage,
    RepositoryState,
    SchemaDocument,
    SchemaQuery,
    SchemaRecord,
    StoredPackage,
    now,
)
from fhirschema_bus.object_store import (
    AsyncObjectStore,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreUnavailable,
)
from fhirschema_bus.settings import S3Settings
from storage_service import keys
from storage_service.index import SchemaIndex
from storage_service.state import StateStore

log = logging.getLogger("storage.repository")


class StorageError(Exception):
    status = 500


class NotFound(StorageError):
    status = 404


class BadRequest(StorageError):
    status = 400


class Conflict(StorageError):
    status = 409


class Unavailable(StorageError):
    status = 503


class SchemaRepository:
    def __init__(
        self,
        store: AsyncObjectStore,
        index: SchemaIndex,
        state: StateStore,
        s3: S3Settings,
        packages_cached: int = 4,
    ) -> None:
        self.store = store
        self.index = index
        self.state = state
        self.bucket = s3.bucket_schemas
        self._packages: OrderedDict[str, tuple[Package, dict[str, Any], str, ObjectRef]] = OrderedDict()
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
        """Store a schema under the id its identity (url|version + package) gives. A new identity
        is added; an existing one is replaced only when asked (`replace`, or `id` naming it: PUT)."""
        schema = put.schema_
        url, version = schema.get("url"), _str(schema.get("version"))
        if not isinstance(url, str) or not url:
            raise BadRequest("schema has no 'url'")
        package = put.package or _str(schema.get("package_id"))
        if put.id is not None:  # PUT /schemas/{id}: replace exactly that record
            target = await self.index.get(put.id)
            if target is None:
                raise NotFound(f"no schema with id {put.id}: POST /schemas adds a new one")
            package = put.package or target.package
            if keys.schema_id(url, version, package) != put.id:
                raise Conflict(
                    f"schema {put.id} is {_identity(target.url, target.version, target.package)}, the "
                    f"body is {_identity(url, version, package)}: a replacement keeps url, version and "
                    "package (POST /schemas adds a schema with another identity)"
                )
        rid = keys.schema_id(url, version, package)
        existing = await self.index.get(rid)
        if existing is not None and (existing.url, existing.version, existing.package) != (
            url,
            version,
            package,
        ):
            raise Conflict(
                f"id {rid} of {_identity(url, version, package)} is taken by "
                f"{_identity(existing.url, existing.version, existing.package)}"
            )
        if existing is not None and put.id is None and not put.replace:
            raise Conflict(
                f"{_identity(url, version, package)} exists as schema {rid}: PUT /schemas/{rid} "
                "replaces it (or POST /schemas?replace=true)"
            )
        key = existing.object.key if existing else keys.schema_key(rid, package)
        raw = orjson.dumps(schema)
        rec = SchemaRecord(
            id=rid, url=url, version=version, type=_str(schema.get("type")), kind=_str(schema.get("kind")),
            derivation=_str(schema.get("derivation")), package=package, origin=put.origin,
            object=ObjectRef(bucket=self.bucket, key=key), updated=now(),
        )  # fmt: skip
        await self._s3(self.store.aput_bytes(self.bucket, key, raw, "application/json"))
        await self._s3(
            self.store.aput_bytes(self.bucket, keys.record_key(rid), rec.model_dump_json().encode())
        )
        await self.index.put(rec)
        await self.index.cache_schema(rid, raw)
        if "upload" in (rec.origin, existing.origin if existing else None):
            await self._uploads_changed()
        return rec

    async def _uploads_changed(self) -> None:
        def bump(state: RepositoryState) -> bool:
            state.uploads += 1
            return True

        await self.state.change(bump)

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

    async def get_schema(self, q: SchemaQuery) -> SchemaDocument:
        rec = await self.find(q)
        raw = await self.index.cached_schema(rec.id)
        if raw is None:
            try:
                raw = await self._s3(self.store.aget_bytes(rec.object.bucket, rec.object.key))
            except NotFound:
                raise NotFound(f"schema {rec.id} is indexed but its object is missing") from None
            await self.index.cache_schema(rec.id, raw)
        return SchemaDocument(record=rec, schema_=orjson.loads(raw))

    async def list(self, q: SchemaQuery) -> tuple[list[SchemaRecord], int]:
        recs = await self.index.all()
        if q.url:
            url, _, version = q.url.partition("|")
            recs = [r for r in recs if r.url == url and (not version or r.version == version)]
        if q.type:
            recs = [r for r in recs if r.type == q.type]
        if q.package:
            recs = [r for r in recs if r.package == q.package or (r.package or "").split("#")[0] == q.package]
        if q.origin:
            recs = [r for r in recs if r.origin == q.origin]
        recs.sort(key=lambda r: (r.package or "", r.id))
        return recs[q.offset : q.offset + max(q.limit, 0)], len(recs)

    async def delete(self, rid: str) -> bool:
        rec = await self.index.get(rid)
        if rec is None:
            return False
        await self._s3(self.store.adelete(self.bucket, keys.record_key(rid)))
        await self._s3(self.store.adelete(rec.object.bucket, rec.object.key))
        await self.index.remove(rec)
        if rec.origin == "upload":
            await self._uploads_changed()
        return True

    # --- raw canonical resources ------------------------------------------------------------

    async def index_package(self, req: IndexPackage) -> PackageIndexed:
        """Register a stored tarball: index its canonical resources and put it in the state."""
        pkg, _, digest = await self._package(req.package, req.object)
        if req.sha256 and req.sha256 != digest:
            raise BadRequest(
                f"{req.package}: the object {req.object.bucket}/{req.object.key} has sha256 {digest}, "
                f"not {req.sha256}: store the tarball again"
            )
        if pkg.id != req.package:
            raise BadRequest(f"{req.object.key} holds {pkg.id}, not {req.package}")
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
        stored = StoredPackage(
            package=req.package, object=req.object, sha256=digest, fhir_versions=_fhir_versions(pkg),
            dependencies=pkg.dependencies, source=req.source,
        )  # fmt: skip

        def register(state: RepositoryState) -> bool:
            known = state.package(req.package)
            if known is not None and (known.sha256, known.object) == (stored.sha256, stored.object):
                return False  # indexed again (a retry, a restart of ig-ingest): nothing changed
            state.packages = [p for p in state.packages if p.package != req.package] + [stored]
            return True

        state = await self.state.change(register)
        registered = state.package(req.package) or stored
        log.info(
            "package %s registered (sha256 %s, state revision %d)", req.package, digest[:12], state.revision
        )
        return PackageIndexed(package=registered, resources=len(latest), revision=state.revision)

    async def remove_package(self, req: RemovePackage) -> PackageRemoved:
        """Out of the state first (validators drop it), then its records and resource index."""

        def unregister(state: RepositoryState) -> bool:
            before = len(state.packages)
            state.packages = [p for p in state.packages if p.package != req.package]
            return len(state.packages) != before

        before = await self.state.read()
        state = await self.state.change(unregister)
        recs = [r for r in await self.index.all() if r.package == req.package and r.origin == "package"]
        for rec in recs:
            await self._s3(self.store.adelete(self.bucket, keys.record_key(rec.id)))
            await self._s3(self.store.adelete(rec.object.bucket, rec.object.key))
            await self.index.remove(rec)
        await self._s3(self.store.adelete(self.bucket, keys.resources_key(req.package)))
        await self.index.drop_resources(req.package)
        self._packages.pop(req.package, None)
        removed = before.package(req.package) is not None
        return PackageRemoved(
            package=req.package, removed=removed, schemas=len(recs), revision=state.revision
        )

    async def get_resource(self, url: str) -> dict[str, Any]:
        ref = await self.index.resource(url)
        if ref is None:
            raise NotFound(f"no resource with url {url}")
        pkg, by_file, _ = await self._package(ref["package"], ObjectRef(bucket=ref["bucket"], key=ref["key"]))
        return await asyncio.to_thread(pkg.read, by_file[ref["file"]])

    async def _package(self, name: str, obj: ObjectRef) -> tuple[Package, dict[str, Any], str]:
        async with self._lock:
            if name in self._packages and self._packages[name][3] == obj:
                self._packages.move_to_end(name)
                return self._packages[name][:3]
            data = await self._s3(self.store.aget_bytes(obj.bucket, obj.key))
            try:
                pkg = await asyncio.to_thread(load_tgz, obj.key, data)
            except PackageError as e:
                raise BadRequest(f"{name}: {e}") from e
            digest = hashlib.sha256(data).hexdigest()
            self._packages[name] = (pkg, {e.filename: e for e in pkg.entries}, digest, obj)
            while len(self._packages) > self._packages_max:
                self._packages.popitem(last=False)
            return self._packages[name][:3]

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


def _identity(url: str, version: str | None, package: str | None) -> str:
    return f"{url}|{version or ''}" + (f" of {package}" if package else " (uploaded)")


def _fhir_versions(pkg: Package) -> list[str]:
    raw = pkg.manifest.get("fhirVersions") or pkg.manifest.get("fhir-version-list") or []
    return [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
