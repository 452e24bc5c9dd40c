"""Retention (service layer): keep the newest N versions of every package in the repository.

Kept besides the newest N of a name: *pinned* versions (named exactly, `name#1.2.3`, in the
schedule or FHIRSCHEMA_PACKAGES) and every version a kept package depends on (its package.json,
as the repository state records it) — removing those would break validation against a kept IG.
A removed version goes through storage's contract (RemovePackage: out of the repository state,
its schema records and their objects dropped; validators unload it), then its tarball leaves S3
and its ingest record leaves KV_INGEST. `dry_run` only lists what would go.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Protocol

from fhirschema.ids import PackageId, version_key
from fhirschema_bus import metrics
from fhirschema_bus.contracts import (
    PackageRemoved,
    RemovePackage,
    RepositoryState,
    RetentionReport,
    RetentionRequest,
    StoredPackage,
)

log = logging.getLogger("ig_ingest.retention")


class Remover(Protocol):
    """bus.NatsSink (storage's contract) and the S3 / KV adapters."""

    async def repository(self) -> RepositoryState: ...
    async def remove_package(self, req: RemovePackage) -> PackageRemoved: ...


class Objects(Protocol):
    async def adelete(self, bucket: str, key: str) -> None: ...


class Records(Protocol):
    async def delete_package(self, pid: PackageId) -> None: ...


def pinned_versions(specs: list[str]) -> set[str]:
    """`name#1.2.3` (not wildcards, `current` or bare names) -> `name#1.2.3`."""
    out = set()
    for spec in specs:
        name, version = PackageId.split(spec)
        if version and "x" not in version.lower().split(".") and not version.startswith(("current", "dev")):
            out.add(f"{name}#{version}")
    return out


def plan(state: RepositoryState, keep: int, pinned: set[str]) -> tuple[list[str], list[str]]:
    """(kept, removed) package specs; `keep` <= 0 keeps everything."""
    specs = [p.package for p in state.packages]
    if keep <= 0:
        return sorted(specs), []
    by_name: dict[str, list[StoredPackage]] = defaultdict(list)
    for p in state.packages:
        by_name[PackageId.split(p.package)[0]].append(p)
    kept: set[str] = set()
    for versions in by_name.values():
        versions.sort(key=lambda p: version_key(PackageId.split(p.package)[1]), reverse=True)
        kept |= {p.package for p in versions[:keep]}
    kept |= pinned & set(specs)
    # What a kept package needs stays, transitively.
    deps = {p.package: p.dependencies for p in state.packages}
    todo = list(kept)
    while todo:
        for name, version in deps.get(todo.pop(), {}).items():
            spec = f"{name}#{version}"
            if spec in deps and spec not in kept:
                kept.add(spec)
                todo.append(spec)
    return sorted(kept), sorted(set(specs) - kept, key=lambda s: PackageId.parse(s).sort_key)


class Retention:
    def __init__(
        self, sink: Remover, objects: Objects, records: Records, keep: int, pinned: set[str],
    ) -> None:  # fmt: skip
        self.sink, self.objects, self.records = sink, objects, records
        self.keep, self.pinned = keep, pinned

    async def run(self, req: RetentionRequest, pinned: set[str] | None = None) -> RetentionReport:
        keep = req.keep if req.keep is not None else self.keep
        state = await self.sink.repository()
        kept, removed = plan(state, keep, self.pinned | (pinned or set()))
        report = RetentionReport(keep=keep, dry_run=req.dry_run, kept=kept, removed=removed)
        if req.dry_run or not removed:
            return report
        stored = {p.package: p for p in state.packages}
        done = []
        for spec in removed:
            try:
                gone = await self.sink.remove_package(RemovePackage(package=spec))
                obj = stored[spec].object
                await self.objects.adelete(obj.bucket, obj.key)  # the tarball ig-ingest stored
                await self.records.delete_package(PackageId.parse(spec))
                report.schemas += gone.schemas
                metrics.INGEST_RETENTION_REMOVED.inc()
                done.append(spec)
                log.info("retention: %s removed (%d schemas)", spec, gone.schemas)
            except Exception as e:  # the others still go; this one is retried next time
                report.errors.append(f"{spec}: {type(e).__name__}: {e}")
                log.warning("retention: %s not removed: %s", spec, e)
        report.removed = done
        return report
