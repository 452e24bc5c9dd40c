"""The schema repository: FHIRSchemas and their index, on S3 + the index, and the repository
state (the registered packages and the uploads' revision, state.py).

S3 layout (bucket_schemas): `<name>/<version>/<id>.json` (uploads under `_uploads/`); the index's
durable copy under `_index/` (durable.py: one object per record, or per durable chunk). Tarballs live in bucket_packages (ig-ingest stores
them); validators read them from there, storage only registers them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson

from fhirschema.ids import Canonical
from fhirschema.package import Package, PackageError, load_tgz
from fhirschema_bus.contracts import (
    IndexPackage,
    ObjectRef,
    PackageIndexed,
    PackageRemoved,
    PutSchema,
    PutSchemas,
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
from storage_service.durable import DurableRecords
from storage_service.index import SchemaIndex
from storage_service.state import StateStore

log = logging.getLogger("storage.repository")
# S3 writes of one chunk in flight at once (the client's pool holds 32 connections): one at a
# time, a chunk of R4 core took ~40 ms per schema on a loaded machine.
S3_CONCURRENCY = 16


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
        self, store: AsyncObjectStore, index: SchemaIndex, state: StateStore, s3: S3Settings
    ) -> None:
        self.store = store
        self.index = index
        self.state = state
        self.bucket = s3.bucket_schemas
        self.durable = DurableRecords(store, self.bucket, self._s3)

    async def start(self) -> None:
        """Create the buckets; adopt the index in Redis, or rebuild it from S3 (and keep
        checking that Redis still holds it)."""
        await self.store.aensure_buckets()
        await self.index.start(self.records_in_s3)

    async def records_in_s3(self) -> list[SchemaRecord]:
        """Every record's durable copy (durable.py)."""
        return await self.durable.all()

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
        await self.durable.put(rec)
        await self.index.put(rec)
        if "upload" in (rec.origin, existing.origin if existing else None):
            await self._uploads_changed()
        return rec

    async def upsert_many(self, chunk: PutSchemas) -> list[SchemaRecord]:
        """A durable chunk (STORAGE_PUT_SCHEMAS): every put replaces its identity's record, as
        the durable single put does. The S3 writes (schema, then its record) run concurrently,
        the index is read and written once for the chunk. A put that cannot be stored (no url,
        an id taken by another identity) does not stop the others: BadRequest names them after."""
        recs: list[SchemaRecord] = []
        raws: list[bytes] = []
        refused: list[str] = []
        wanted = []
        for put in chunk.puts:
            url, version = put.schema_.get("url"), _str(put.schema_.get("version"))
            if not isinstance(url, str) or not url:
                refused.append(f"a schema of {put.package or 'no package'} has no 'url'")
                continue
            package = put.package or _str(put.schema_.get("package_id"))
            wanted.append((put, url, version, package, keys.schema_id(url, version, package)))
        existing = await self.index.get_many([w[-1] for w in wanted])
        for put, url, version, package, rid in wanted:
            old = existing.get(rid)
            if old is not None and (old.url, old.version, old.package) != (url, version, package):
                refused.append(f"id {rid} of {_identity(url, version, package)} is taken by "
                               f"{_identity(old.url, old.version, old.package)}")  # fmt: skip
                continue
            schema = put.schema_
            recs.append(SchemaRecord(
                id=rid, url=url, version=version, type=_str(schema.get("type")), kind=_str(schema.get("kind")),
                derivation=_str(schema.get("derivation")), package=package, origin=put.origin, updated=now(),
                object=ObjectRef(bucket=self.bucket, key=old.object.key if old else keys.schema_key(rid, package)),
            ))  # fmt: skip
            raws.append(orjson.dumps(schema))
        sem = asyncio.Semaphore(S3_CONCURRENCY)

        async def write(rec: SchemaRecord, raw: bytes) -> None:
            async with sem:
                await self._s3(self.store.aput_bytes(self.bucket, rec.object.key, raw, "application/json"))

        # The schemas first, then their records (one object per package of the chunk): a record
        # in S3 always has its object.
        await asyncio.gather(*(write(rec, raw) for rec, raw in zip(recs, raws, strict=True)))
        await self.durable.put_chunk(recs)
        await self.index.put_many(recs)
        if any("upload" in (r.origin, existing[r.id].origin if r.id in existing else None) for r in recs):
            await self._uploads_changed()
        if refused:
            raise BadRequest(
                f"{len(refused)} of {len(chunk.puts)} schemas not stored: " + "; ".join(refused[:5])
            )
        return recs

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
        try:  # from S3 each time: a cache beside it would go stale between storage replicas
            raw = await self._s3(self.store.aget_bytes(rec.object.bucket, rec.object.key))
        except NotFound:
            raise NotFound(f"schema {rec.id} is indexed but its object is missing") from None
        return SchemaDocument(record=rec, schema_=orjson.loads(raw))

    async def list(self, q: SchemaQuery) -> tuple[list[SchemaRecord], int]:
        if q.package and "#" in q.package and not (q.url or q.type):
            # One package (ig-ingest counting what is stored, GET /schemas?package=): its own
            # ids, and only the page's records read.
            ids = await self.index.package_ids(q.package, q.origin)
            page = ids[q.offset : q.offset + max(q.limit, 0)]
            found = await self.index.get_many(page)
            return [found[i] for i in page if i in found], len(ids)
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
        await self.durable.delete(rec)
        await self._s3(self.store.adelete(rec.object.bucket, rec.object.key))
        await self.index.remove(rec)
        if rec.origin == "upload":
            await self._uploads_changed()
        return True

    # --- raw canonical resources ------------------------------------------------------------

    async def index_package(self, req: IndexPackage) -> PackageIndexed:
        """Register a stored tarball in the state (validators load it from there)."""
        try:
            data = await self._s3(self.store.aget_bytes(req.object.bucket, req.object.key))
        except NotFound:
            raise BadRequest(f"{req.package}: no tarball at {req.object.bucket}/{req.object.key}") from None
        digest = hashlib.sha256(data).hexdigest()
        if req.sha256 and req.sha256 != digest:
            raise BadRequest(
                f"{req.package}: the object {req.object.bucket}/{req.object.key} has sha256 {digest}, "
                f"not {req.sha256}: store the tarball again"
            )
        try:
            pkg = await asyncio.to_thread(load_tgz, req.object.key, data)
        except PackageError as e:
            raise BadRequest(f"{req.package}: {e}") from e
        if pkg.id != req.package:
            raise BadRequest(f"{req.object.key} holds {pkg.id}, not {req.package}")
        stored = StoredPackage(
            package=req.package, object=req.object, sha256=digest, fhir_versions=_fhir_versions(pkg),
            dependencies=pkg.dependencies, source=req.source,
        )  # fmt: skip

        def register(state: RepositoryState) -> bool:
            known = state.package(req.package)
            if known is not None and (known.sha256, known.object) == (stored.sha256, stored.object):
                return False  # registered again (a retry, a restart of ig-ingest): nothing changed
            state.packages = [p for p in state.packages if p.package != req.package] + [stored]
            return True

        state = await self.state.change(register)
        registered = state.package(req.package) or stored
        log.info(
            "package %s registered (sha256 %s, state revision %d)", req.package, digest[:12], state.revision
        )
        resources = len({e.url for e in pkg.entries if e.url})
        return PackageIndexed(package=registered, resources=resources, revision=state.revision)

    async def remove_package(self, req: RemovePackage) -> PackageRemoved:
        """Out of the state first (validators drop it), then its schema records."""

        def unregister(state: RepositoryState) -> bool:
            before = len(state.packages)
            state.packages = [p for p in state.packages if p.package != req.package]
            return len(state.packages) != before

        before = await self.state.read()
        state = await self.state.change(unregister)
        recs = [r for r in await self.index.all() if r.package == req.package and r.origin == "package"]
        await self.durable.delete_package(req.package, recs)
        for rec in recs:
            await self._s3(self.store.adelete(rec.object.bucket, rec.object.key))
            await self.index.remove(rec)
        removed = before.package(req.package) is not None
        return PackageRemoved(
            package=req.package, removed=removed, schemas=len(recs), revision=state.revision
        )

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
