"""Per-job and per-package ingest status in JetStream KV (KV_INGEST): what GET /ig/status shows.
Written by ig-ingest (and by the gateway for a job it queues), read by the gateway.

One replica runs a job (one IngestRequest message), so a job's record has one writer; package
records are the last writer's (the same name, version and SHA-256 whoever writes them).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from fhirschema.ids import PackageId
from fhirschema_bus import kv_list
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import IngestedPackage, IngestJob


def package_key(pid: PackageId) -> str:
    # KV keys allow [-/_=.a-zA-Z0-9]: versions like 6.1.0-snapshot1 fit, `#` does not.
    return f"pkg.{pid.name}.{pid.version}"


class IngestStatus:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self.js = js
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> IngestStatus:
        return cls(js, await js.key_value(s.KV_INGEST))

    async def put_job(self, job: IngestJob) -> None:
        await self.kv.put(f"job.{job.job}", job.model_dump_json().encode())

    async def job(self, job_id: str) -> IngestJob | None:
        try:
            entry = await self.kv.get(f"job.{job_id}")
        except KeyNotFoundError:
            return None
        return IngestJob.model_validate_json(entry.value) if entry.value else None

    async def put_package(self, pkg: IngestedPackage) -> None:
        await self.kv.put(package_key(PackageId(pkg.name, pkg.version)), pkg.model_dump_json().encode())

    async def package(self, pid: PackageId) -> IngestedPackage | None:
        try:
            entry = await self.kv.get(package_key(pid))
        except KeyNotFoundError:
            return None
        return IngestedPackage.model_validate_json(entry.value) if entry.value else None

    async def delete_package(self, pid: PackageId) -> None:
        await self.kv.delete(package_key(pid))

    # Listing through kv_list: no consumer per call (kv.keys() left one for 5 minutes).
    async def packages(self) -> list[IngestedPackage]:
        found = await kv_list.entries(self.js, s.KV_INGEST, "pkg.", kv=self.kv)
        out = [IngestedPackage.model_validate_json(e.value) for e in found if e.value]
        return sorted(out, key=lambda p: PackageId(p.name, p.version).sort_key)

    async def jobs(self, limit: int = 20) -> list[IngestJob]:
        found = await kv_list.entries(self.js, s.KV_INGEST, "job.", kv=self.kv)
        out = [IngestJob.model_validate_json(e.value) for e in found if e.value]
        return sorted(out, key=lambda j: j.created, reverse=True)[:limit]
