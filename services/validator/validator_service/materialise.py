"""How a replica materialises the repository: package tarballs from S3, uploads from storage.

`RepositorySync.apply(state)` brings the replica to one `RepositoryState`: it downloads the
tarballs of the registered packages of its FHIR version it does not hold yet (sha256 checked,
parsed in a worker thread), fetches the uploaded schemas when their revision changed (storage
request/reply, only then — never per lookup), hands the result to `Contexts.replace` (which drops
what depended on anything that changed), builds the default context and says whether the
replica is ready: the core package and the configured packages are loaded, the core types
resolve, nothing registered failed to load and the uploads are current. Until then the worker
pulls no message.

`follow()` runs it for every state the KV watch reports, retrying (1 s) while something that
retrying can fix (S3, storage) stands between the replica and the state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fhirschema.cache import PackageCache
from fhirschema.context import FhirContext
from fhirschema.ids import PackageId
from fhirschema.package import Package, PackageError, load_package, load_tgz
from fhirschema_bus.contracts import RepositoryState, SchemaDocument, SchemaList, SchemaQuery, StoredPackage
from fhirschema_bus.probes import Readiness

from .contexts import Contexts, Materialised
from .tarball_cache import TarballCache

log = logging.getLogger("fhirschema.validator")
T = TypeVar("T")
Blocking = Callable[..., Awaitable[Any]]  # runs a blocking call in the replica's worker threads
CORE_TYPES = ("Resource", "DomainResource", "Element", "Patient", "Observation")


class Tarballs(Protocol):
    async def aget_bytes(self, bucket: str, key: str) -> bytes: ...


class Uploads(Protocol):
    """Uploaded schemas (fhirschema_bus.storage.StorageClient)."""

    async def list(self, query: SchemaQuery) -> SchemaList: ...
    async def get_schema(self, query: SchemaQuery) -> SchemaDocument: ...


def fhir_release(core: str) -> str:
    """`hl7.fhir.r4.core#4.0.1` -> "4.0": packages for 4.0.x belong to this replica."""
    return ".".join(PackageId.parse(core).version.split(".")[:2])


def for_release(stored: StoredPackage, release: str) -> bool:
    versions = stored.fhir_versions
    return not versions or any(".".join(v.split(".")[:2]) == release for v in versions)


def core_types_resolve(fhir: FhirContext) -> list[str]:
    """The core types this context cannot resolve (none: it can validate)."""
    return [t for t in CORE_TYPES if fhir.schema(t) is None]


class RepositorySync:
    def __init__(
        self,
        contexts: Contexts,
        tarballs: Tarballs | None,
        uploads: Uploads | None,
        blocking: Blocking,
        *,
        core: str,
        required: Sequence[str] = (),
        cache: TarballCache | None = None,
    ) -> None:
        self.contexts = contexts
        self.cache = cache or TarballCache(None)
        self._to_cache: list[tuple[str, bytes]] = []  # written once the replica said it is ready
        self.tarballs, self.uploads, self.blocking = tarballs, uploads, blocking
        self.core, self.required = core, list(required)
        self.release = fhir_release(core)
        self.revision = -1  # the state revision the replica has reached
        self._held: dict[str, tuple[str, Package]] = {}  # name#version -> (sha256, package)
        self._uploads: dict[str, tuple[Any, dict[str, Any]]] = {}  # id -> (updated, schema)
        self._uploads_revision = 0  # revision 0: nothing was ever uploaded

    async def apply(self, state: RepositoryState) -> tuple[Readiness, bool]:
        """(readiness, retry): retry when something transient (S3, storage) was in the way."""
        mine = [p for p in state.packages if for_release(p, self.release)]
        failed: dict[str, str] = {}
        for stored in mine:
            if self._held.get(stored.package, ("",))[0] != stored.sha256:
                try:
                    self._held[stored.package] = (stored.sha256, await self._download(stored))
                except Exception as e:
                    failed[stored.package] = f"{type(e).__name__}: {e}"
                    log.warning("package %s not loaded: %s", stored.package, failed[stored.package])
        registered = {p.package for p in mine}
        for gone in set(self._held) - registered:
            del self._held[gone]
        uploads_error = await self._sync_uploads(state.uploads)
        held = {pid: pkg for pid, (_, pkg) in self._held.items() if pid not in failed}
        have = Materialised(
            packages=held, digests={pid: sha for pid, (sha, _) in self._held.items()}, core=self.core,
            uploads=tuple(schema for _, schema in self._uploads.values()),
            uploads_revision=self._uploads_revision,
        )  # fmt: skip
        dropped = self.contexts.replace(have)
        if dropped:
            log.info("repository revision %d: contexts rebuilt: %s", state.revision, dropped)
        self.revision = state.revision
        readiness = await self.readiness(state, failed, uploads_error)
        return readiness, bool(failed or uploads_error)

    async def _download(self, stored: StoredPackage) -> Package:
        cached: Package | None = await self.blocking(self.cache.load, stored.sha256)
        if cached is not None:
            log.info(
                "package %s loaded from %s (%d resources)", stored.package, cached.source, len(cached.entries)
            )
            return cached
        if self.tarballs is None:
            raise RuntimeError("no S3 credentials (FHIRSCHEMA_S3_*): package tarballs cannot be read")
        data = await self.tarballs.aget_bytes(stored.object.bucket, stored.object.key)
        digest = hashlib.sha256(data).hexdigest()
        if digest != stored.sha256:
            raise PackageError(
                stored.package, f"tarball has sha256 {digest}, the repository says {stored.sha256}"
            )
        pkg: Package = await self.blocking(load_tgz, f"{stored.package}.tgz", data)
        self._to_cache.append((stored.sha256, data))
        log.info("package %s loaded (%d resources)", stored.package, len(pkg.entries))
        return pkg

    async def _sync_uploads(self, revision: int) -> str:
        """Fetch the uploaded schemas when their revision moved; an error message, or ''."""
        if revision == self._uploads_revision or self.uploads is None:
            return ""
        try:
            records, offset = [], 0
            while True:
                page = await self.uploads.list(SchemaQuery(origin="upload", limit=1000, offset=offset))
                records += page.items
                offset += len(page.items)
                if not page.items or offset >= page.total:
                    break
            fresh: dict[str, tuple[Any, dict[str, Any]]] = {}
            for rec in records:
                known = self._uploads.get(rec.id)
                if known is not None and known[0] == rec.updated:
                    fresh[rec.id] = known
                else:
                    fresh[rec.id] = (
                        rec.updated,
                        (await self.uploads.get_schema(SchemaQuery(id=rec.id))).schema_,
                    )
        except Exception as e:
            log.warning("uploaded schemas (revision %d) not loaded: %s", revision, e)
            return f"uploaded schemas (revision {revision}) not loaded: {e}"
        self._uploads, self._uploads_revision = fresh, revision
        return ""

    async def readiness(
        self, state: RepositoryState, failed: dict[str, str] | None = None, uploads_error: str = ""
    ) -> Readiness:
        """Ready when the core and the configured packages are held, the core types resolve and
        nothing stands between the replica and `state`; else what is missing, and why."""
        failed = failed or {}
        have = self.contexts.materialised.packages
        wanted = dict.fromkeys([self.core, *self.required])
        missing = [p for p in wanted if p not in have and p not in failed]
        missing = [p for p in missing if p == self.core or _for_me(state, p, self.release)]
        reasons = [f"not in the repository yet: {', '.join(missing)}"] if missing else []
        reasons += [f"{p} could not be loaded ({why})" for p, why in failed.items()]
        if uploads_error:
            reasons.append(uploads_error)
        if self.core in have:
            ctx = await self.blocking(self.contexts.context, ())
            unresolved = await self.blocking(core_types_resolve, ctx.fhir)
            if unresolved:
                reasons.append(f"{self.core} does not resolve the core types {', '.join(unresolved)}")
        if reasons:
            return Readiness(False, "; ".join(reasons), [*missing, *failed])
        return Readiness(True)

    def write_cache(self, state: RepositoryState) -> None:
        """After readiness was said: what was downloaded goes to the local cache (a thread)."""
        for sha256, data in self._to_cache:
            self.cache.save_later(sha256, data)
        self._to_cache.clear()
        self.cache.prune(p.sha256 for p in state.packages)

    async def follow(
        self, states: AsyncIterator[RepositoryState], publish: Callable[[Readiness], Awaitable[None]]
    ) -> None:
        latest: list[RepositoryState] = []
        changed = asyncio.Event()

        async def watch() -> None:
            async for state in states:
                latest[:] = [state]
                changed.set()

        watcher = asyncio.create_task(watch(), name="repository-watch")
        try:
            while True:
                await changed.wait()
                changed.clear()
                readiness, retry = await self.apply(latest[0])
                await publish(readiness)
                self.write_cache(latest[0])
                if retry:
                    await asyncio.sleep(1.0)
                    changed.set()
        finally:
            watcher.cancel()


def _for_me(state: RepositoryState, spec: str, release: str) -> bool:
    """A configured package registered for another FHIR version is not this replica's to miss."""
    stored = state.package(spec)
    return stored is None or for_release(stored, release)


class LocalPackages:
    """Local mode (FHIRSCHEMA_VALIDATOR_PACKAGES): packages from files, as the CLI loads them.

    A `.tgz` file is read through the tarball cache by its SHA-256, the repository's folders and
    rule (tarball_cache.py): unknown, it is unpacked from the file and written to the cache after
    ready (`write_cache`); known, its folder is read instead (R4 core: see bench/README.md, "Start
    to ready"). A changed file has another digest, hence another folder."""

    def __init__(self, paths: Sequence[str], core: str, cache: TarballCache) -> None:
        self.paths, self.core, self.cache = list(paths), core, cache
        self._digests: dict[str, str] = {}  # name#version -> sha256 of its file
        self._to_cache: list[tuple[str, bytes]] = []

    def load(self) -> Materialised:
        """Blocking: run it in a worker thread."""
        ctx = FhirContext.from_specs(self.paths, load=self._load)
        packages = {p.id: p for p in ctx.packages}
        digests = {p.id: self._digests.get(p.id, p.source) for p in ctx.packages}
        return Materialised(packages=packages, digests=digests, core=self.core, default_order=tuple(packages))

    def _load(self, spec: str | Path, packages: PackageCache) -> Package:
        path = Path(spec)
        if self.cache.root is None or not path.is_file():
            return load_package(spec, packages)  # a folder, name#version in the FHIR cache
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        pkg = self.cache.load(sha256)
        if pkg is None:
            pkg = load_tgz(path, data)
            self._to_cache.append((sha256, data))
        else:
            pkg.source = str(path)  # named as configured; its dependencies are looked for beside it
        self._digests[pkg.id] = sha256
        return pkg

    def write_cache(self) -> list[threading.Thread]:
        """After readiness was said: what was unpacked from files goes to the cache (threads)."""
        threads = [t for sha256, data in self._to_cache if (t := self.cache.save_later(sha256, data))]
        self._to_cache.clear()
        return threads
