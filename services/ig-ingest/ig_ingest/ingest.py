"""The ingest service layer: one package from the sources into the repository.

Steps: fetch the tarball (first source that has it) -> store it in bucket_packages -> ask
storage to index its canonical resources (ValueSet, CodeSystem, StructureDefinition, ... travel
inside the tarball) -> convert every StructureDefinition and publish each FHIRSchema as a
PutSchema on the durable storage subject (de-duplicated by Nats-Msg-Id) -> count progress on the
job -> write a done-marker so a restart does not ingest the same package again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from fhirschema.converter import ConversionError, convert
from fhirschema.ids import PackageId
from fhirschema.package import Package, PackageError, load_tgz
from fhirschema_bus.contracts import IndexPackage, JobStatus, ObjectRef, PutSchema
from fhirschema_bus.object_store import ObjectStore
from ig_ingest.sources import PackageSource, fetch_first

log = logging.getLogger("ig_ingest")
MAX_MESSAGE = 1024 * 1024 - 16 * 1024  # NATS default max_payload, minus headers


class SchemaSink(Protocol):
    """How schemas and package indexes reach the storage service (bus.py implements it)."""

    async def put_schema(self, put: PutSchema, msg_id: str) -> None: ...
    async def index_package(self, req: IndexPackage) -> int: ...


class Progress(Protocol):
    """The subset of fhirschema_bus.jobs.JobStore used here."""

    async def get(self, job_id: str) -> JobStatus | None: ...
    async def start(self, job_id: str, total: int | None = None) -> JobStatus: ...
    async def record(self, job_id: str, index: int, outcome: Any) -> JobStatus | None: ...
    async def fail(self, job_id: str, error: str) -> JobStatus: ...


class IngestError(RuntimeError):
    pass


def package_key(spec: str) -> str:
    return PackageId.parse(spec).tgz_key


class Ingester:
    def __init__(
        self,
        sources: Callable[[list[str]], list[PackageSource]],
        default_sources: list[str],
        store: ObjectStore,
        sink: SchemaSink,
        progress: Progress,
        bucket: str,
    ) -> None:
        self.sources = sources
        self.default_sources = default_sources
        self.store = store
        self.sink = sink
        self.progress = progress
        self.bucket = bucket

    async def already_done(self, spec: str) -> bool:
        return await self.store.aexists(self.bucket, package_key(spec) + ".done.json")

    async def ingest(
        self,
        job_id: str,
        spec: str,
        sources: list[str] | None = None,
        tick: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Returns a summary; raises IngestError (job failed) when the package cannot be loaded."""
        try:
            return await self._ingest(job_id, spec, sources or self.default_sources, tick)
        except IngestError as e:
            await self.progress.fail(job_id, str(e))
            raise

    async def _ingest(
        self, job_id: str, spec: str, source_specs: list[str], tick: Callable[[], Awaitable[None]] | None
    ) -> dict[str, Any]:
        srcs = self.sources(source_specs)
        try:
            data, origin = await asyncio.to_thread(fetch_first, srcs, spec)
        except (LookupError, ValueError) as e:
            raise IngestError(str(e)) from e
        try:
            pkg: Package = await asyncio.to_thread(load_tgz, f"{spec}.tgz", data)
        except PackageError as e:
            raise IngestError(f"{spec} from {origin}: {e}") from e
        spec = f"{pkg.name}#{pkg.version}"
        ref: ObjectRef = await self.store.aput_bytes(self.bucket, package_key(spec), data, "application/gzip")
        digest = hashlib.sha256(data).hexdigest()
        resources = await self.sink.index_package(
            IndexPackage(package=spec, object=ref, sha256=digest, source=origin)
        )
        sds = [e for e in pkg.entries if e.resourceType == "StructureDefinition"]
        await self.progress.start(job_id, total=len(sds))
        log.info(
            "%s from %s: %d resources indexed, converting %d StructureDefinitions",
            spec,
            origin,
            resources,
            len(sds),
        )
        converted = failed = 0
        errors: list[str] = []
        for i, entry in enumerate(sds):
            try:
                schema = await asyncio.to_thread(_convert, pkg, entry)
                put = PutSchema(schema_=schema, package=spec, origin="package")
                if len(orjson.dumps(schema)) > MAX_MESSAGE:
                    raise IngestError(f"schema of {entry.url} exceeds the 1 MB message limit")
                await self.sink.put_schema(put, msg_id=f"{job_id}|{entry.url}|{entry.version or ''}")
                converted += 1
                outcome = "valid"
            except (ConversionError, PackageError, IngestError) as e:
                failed += 1
                outcome = "failed"
                if len(errors) < 20:
                    errors.append(f"{entry.filename}: {e}")
                log.warning("%s: %s: %s", spec, entry.filename, e)
            await self.progress.record(job_id, i, outcome)
            if tick is not None and i % 25 == 0:
                await tick()
        marker = {
            "package": spec,
            "source": origin,
            "schemas": converted,
            "failed": failed,
            "resources": resources,
        }
        await self.store.aput_json(self.bucket, package_key(spec) + ".done.json", marker)
        summary = {**marker, "errors": errors}
        log.info("%s ingested: %d schemas, %d failed", spec, converted, failed)
        return summary


def _convert(pkg: Package, entry: Any) -> dict[str, Any]:
    return convert(pkg.read(entry), package=pkg)
