"""The ingest pipeline (service layer): an IngestRequest's packages and their dependency closure
from the configured registries into the schema repository.

Per package: resolve (resolver.Registries) -> download and verify -> skip when the repository
already holds the same name, version and SHA-256 -> store the tarball in S3 -> convert every
StructureDefinition and publish it on storage's durable subject (Nats-Msg-Id from the package
and SHA-256: a rerun or another replica stores nothing twice) -> register the package with
storage (a new repository-state revision: the repository-change that validator replicas act on)
-> record the package in KV_INGEST. Every step's state is in the job's IngestJob record; a
package that fails is reported and the others go on; a crash before the end leaves the request
unacknowledged, and its redelivery skips what was completed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from fhirschema.converter import ConversionError, convert
from fhirschema.ids import PackageId
from fhirschema.package import Package, PackageError
from fhirschema_bus import metrics
from fhirschema_bus.contracts import (
    IndexPackage,
    IngestedPackage,
    IngestJob,
    IngestPackageStatus,
    IngestRequest,
    JobState,
    ObjectRef,
    PackageState,
    PutSchema,
    RepositoryState,
    now,
)
from ig_ingest.resolver import NotFound, Registries
from ig_ingest.tarballs import PackageRejected, Verified

log = logging.getLogger("ig_ingest")
MAX_MESSAGE = 1024 * 1024 - 16 * 1024  # NATS default max_payload, minus headers
CONVERT_CHUNK = 64  # StructureDefinitions per worker-thread call and per round of acks
STORED_WAIT_SECONDS = 120.0  # storage listing a package's schemas before it is registered


class NotStored(RuntimeError):
    """Storage did not list a package's schemas in time: the package is not registered."""


class SchemaSink(Protocol):
    """How schemas and package registrations reach the storage service (bus.NatsSink)."""

    async def put_schemas(self, puts: list[PutSchema], chunk_id: str) -> None: ...  # all acked
    async def index_package(self, req: IndexPackage) -> int: ...
    async def repository(self) -> RepositoryState: ...
    async def stored_schemas(self, package: str) -> int: ...


class Tarballs(Protocol):
    async def aput_bytes(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> ObjectRef: ...


class StatusStore(Protocol):
    """status.IngestStatus."""

    async def put_job(self, job: IngestJob) -> None: ...
    async def job(self, job_id: str) -> IngestJob | None: ...
    async def put_package(self, pkg: IngestedPackage) -> None: ...
    async def package(self, pid: PackageId) -> IngestedPackage | None: ...


Tick = Callable[[], Awaitable[None]]


class Pipeline:
    def __init__(
        self,
        registries: Callable[[IngestRequest], Registries],
        store: Tarballs,
        bucket: str,
        sink: SchemaSink,
        status: StatusStore,
        concurrency: int = 4,
    ) -> None:
        self.registries = registries
        self.store, self.bucket, self.sink, self.status = store, bucket, sink, status
        self.concurrency = max(1, concurrency)

    async def run(self, req: IngestRequest, tick: Tick | None = None) -> IngestJob:
        job = await self.status.job(req.job_id) or IngestJob(job=req.job_id, requested=req.packages)
        if job.state.final:
            return job  # a redelivery of a finished job
        job.state, job.requested = JobState.RUNNING, req.packages
        job.packages = []
        await self.status.put_job(job)
        try:
            registries = self.registries(req)
        except ValueError as e:  # a registry that is not configured
            return await self._finish(job, str(e))
        repo = await self.sink.repository()
        run = _Run(self, req, job, registries, repo, tick)
        await run.closure()
        # A dependency in no registry is named on its parent (which still ingests): not a failure
        # of the job; any other package that failed is.
        missing = {(d, p.name + "#" + str(p.version)) for p in job.packages for d in p.missing_dependencies}
        failed = [
            p for p in job.packages
            if p.state is PackageState.FAILED and (p.requested, p.dependency_of) not in missing
        ]  # fmt: skip
        return await self._finish(
            job, f"{len(failed)} of {len(job.packages)} packages failed" if failed else None
        )

    async def _finish(self, job: IngestJob, error: str | None) -> IngestJob:
        job.state = JobState.FAILED if error else JobState.SUCCEEDED
        job.error, job.finished = error, now()
        await self.status.put_job(job)
        return job


class _Run:
    """One job: the closure walked breadth first, `concurrency` packages at a time."""

    def __init__(
        self, p: Pipeline, req: IngestRequest, job: IngestJob, regs: Registries,
        repo: RepositoryState, tick: Tick | None,
    ) -> None:  # fmt: skip
        self.p, self.req, self.job, self.regs, self.repo, self.tick = p, req, job, regs, repo, tick
        self.seen: set[str] = set()  # requested specs and resolved name#version
        self.lock = asyncio.Lock()
        self.sem = asyncio.Semaphore(p.concurrency)

    async def save(self) -> None:
        async with self.lock:
            await self.p.status.put_job(self.job)
        if self.tick is not None:
            await self.tick()

    async def closure(self) -> None:
        level: list[tuple[str, str | None]] = [(spec, None) for spec in dict.fromkeys(self.req.packages)]
        while level:
            entries = []
            for spec, parent in level:
                if spec in self.seen:
                    continue
                self.seen.add(spec)
                name, version = PackageId.split(spec)
                st = IngestPackageStatus(name=name, version=version, requested=spec, dependency_of=parent)
                self.job.packages.append(st)
                entries.append(st)
            await self.save()
            found = await asyncio.gather(*(self.package(st) for st in entries))
            level = [dep for deps in found for dep in deps] if self.req.dependencies else []

    async def package(self, st: IngestPackageStatus) -> list[tuple[str, str]]:
        """Ingest one; returns its dependencies (name#version, parent) to walk next."""
        async with self.sem:
            st.state = PackageState.RUNNING
            started = time.monotonic()
            try:
                fetched = await self.fetch(st)
                if fetched is None:
                    return []
                await self.ingest(st, fetched)
                st.state = PackageState.SUCCEEDED
            except (NotFound, PackageRejected, PackageError, ValueError) as e:
                st.state, st.error = PackageState.FAILED, str(e)
                log.warning("job %s: %s", self.job.job, e)
                return []
            except Exception as e:  # storage or S3 down: this package fails, the others go on
                st.state, st.error = PackageState.FAILED, f"{type(e).__name__}: {e}; ingest it again later"
                log.exception("job %s: %s", self.job.job, st.requested)
                return []
            finally:
                _observe(st, time.monotonic() - started)
                await self.save()
        me = f"{st.name}#{st.version}"
        return [(f"{n}#{v}", me) for n, v in fetched.dependencies]

    async def fetch(self, st: IngestPackageStatus) -> Verified | None:
        name, version = st.name, st.version
        try:
            res = await self.regs.resolve(name, version)
        except NotFound as e:
            if st.dependency_of is not None:  # named on the parent, which still ingests
                parent = next(p for p in self.job.packages if f"{p.name}#{p.version}" == st.dependency_of)
                parent.missing_dependencies.append(st.requested)
            raise NotFound(f"{e}") from e
        st.version = res.pid.version
        resolved = str(res.pid)
        if resolved != st.requested and resolved in self.seen:
            self.job.packages.remove(st)  # `name` and `name#1.0.0` in one closure: listed once
            return None
        self.seen.add(resolved)
        fetched = await self.regs.fetch(res)
        metrics.INGEST_BYTES.inc(len(fetched.verified.tgz))
        st.sha256, st.source = fetched.verified.sha256, fetched.source
        return fetched.verified

    async def ingest(self, st: IngestPackageStatus, v: Verified) -> None:
        spec = str(v.pid)
        if await self.already_stored(st, v):
            st.schemas, st.skipped = st.total, True
            log.info("%s: already stored with SHA-256 %s, skipped", spec, v.sha256[:12])
            return
        ref = await self.p.store.aput_bytes(self.p.bucket, v.pid.tgz_key, v.tgz, "application/gzip")
        pkg: Package = await asyncio.to_thread(v.package)
        sds = [e for e in pkg.entries if e.resourceType == "StructureDefinition"]
        st.total = len(sds)
        await self.save()  # the count is visible while the package converts
        errors: list[str] = []
        published: set[tuple[Any, Any]] = set()  # distinct url|version: what storage will list
        # Converted CONVERT_CHUNK at a time in one worker thread and published pipelined (a
        # chunk's acks awaited together): an ack round trip per schema was most of the time.
        for start in range(0, len(sds), CONVERT_CHUNK):
            chunk = sds[start : start + CONVERT_CHUNK]
            converted = await asyncio.to_thread(_convert_chunk, pkg, chunk)
            puts = []
            for entry, schema in zip(chunk, converted, strict=True):
                if isinstance(schema, str):
                    errors.append(f"{entry.filename}: {schema}")
                    continue
                puts.append(PutSchema(schema_=schema, package=spec, origin="package"))
                published.add((schema.get("url"), schema.get("version")))
            # One message per chunk, de-duplicated per job: its redelivery (a crash, the other
            # replica) stores nothing twice; another job may store the package again (storage
            # lost it).
            if puts:
                await self.p.sink.put_schemas(puts, f"{self.job.job}|{spec}|{v.sha256[:16]}|{start}")
            st.schemas += len(puts)
            await self.save()
        if errors:
            log.warning("%s: %d StructureDefinitions not converted: %s", spec, len(errors), errors[:3])
        await self.until_stored(spec, len(published))
        # Registering is the repository change: validators load the package from now on.
        await self.p.sink.index_package(
            IndexPackage(package=spec, object=ref, sha256=v.sha256, source=st.source)
        )
        await self.p.status.put_package(
            IngestedPackage(name=v.pid.name, version=v.pid.version, schemas=st.schemas, sha256=v.sha256,
                            source=st.source, job=self.job.job)
        )  # fmt: skip
        log.info("%s from %s: %d schemas", spec, st.source, st.schemas)

    async def until_stored(self, spec: str, count: int) -> None:
        """Storage consumes the schemas from its durable subject at its own pace: registering
        before it lists them all made /ready 200 while GET /schemas listed 369 of R4 core's 658
        (scripts/smoke.py right after make up's /ready). Bounded: then the package fails."""
        deadline = time.monotonic() + STORED_WAIT_SECONDS
        while (held := await self.p.sink.stored_schemas(spec)) < count:
            if time.monotonic() > deadline:
                raise NotStored(
                    f"storage lists {held} of the {count} schemas of {spec} after {STORED_WAIT_SECONDS:.0f}s"
                )
            await asyncio.sleep(0.1)

    async def already_stored(self, st: IngestPackageStatus, v: Verified) -> bool:
        """The same name, version and SHA-256 registered, and storage holds its schemas (the
        repository state can outlive storage's buckets: then the package is stored again)."""
        stored = self.repo.package(str(v.pid))
        known = await self.p.status.package(v.pid)
        if stored is None or stored.sha256 != v.sha256 or known is None or known.sha256 != v.sha256:
            return False
        held = await self.p.sink.stored_schemas(str(v.pid))
        st.total = known.schemas
        return held >= known.schemas


def _convert_chunk(pkg: Package, entries: list[Any]) -> list[dict[str, Any] | str]:
    """Each entry's FHIRSchema, or why it has none (runs in a worker thread)."""
    out: list[dict[str, Any] | str] = []
    for entry in entries:
        try:
            schema = convert(pkg.read(entry), package=pkg)
        except (ConversionError, PackageError) as e:
            out.append(str(e))
            continue
        too_big = len(orjson.dumps(schema)) > MAX_MESSAGE
        out.append("its schema exceeds the 1 MB message limit" if too_big else schema)
    return out


def _observe(st: IngestPackageStatus, seconds: float) -> None:
    if st.state is PackageState.SUCCEEDED:
        metrics.INGEST_RUNS.labels("succeeded").inc()
        metrics.INGEST_LAST_SUCCESS.set(time.time())
        if not st.skipped:
            metrics.INGEST_SCHEMAS.inc(st.schemas)
            metrics.INGEST_SECONDS.observe(seconds)
    elif st.state is PackageState.FAILED:
        metrics.INGEST_RUNS.labels("failed").inc()
