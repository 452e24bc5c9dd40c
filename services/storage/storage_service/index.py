"""The schema index (id -> SchemaRecord, `url|version` and `url` -> id, a package's ids), shared
by storage replicas through Redis and mirrored in memory: what is read and written. How it is
kept complete (a Redis that lost it, several replicas, the rebuild from S3): index_sync.py.
"""

from __future__ import annotations

from typing import Any

from fhirschema.ids import version_key
from fhirschema_bus.contracts import SchemaRecord
from storage_service.index_sync import IndexSync, IndexUnavailable, as_text
from storage_service.rebuild import (
    GENERATION,
    INDEXED,
    MEMBERS,
    RECORDS,
    URLS,
    member,
    member_id,
    member_range,
)

__all__ = ["GENERATION", "RECORDS", "IndexUnavailable", "SchemaIndex"]


class SchemaIndex(IndexSync):
    """Reads answer from Redis when its index is complete and ours, else from the mirror; writes
    go to both (index_sync.py: `_read`, `_write`)."""

    async def get(self, record_id: str, wait: float | None = None) -> SchemaRecord | None:
        res = await self._read(lambda p: p.hget(RECORDS, record_id), self._wait(wait))
        if res is not None:
            return SchemaRecord.model_validate_json(res[0]) if res[0] else None
        return self.records.get(record_id)

    async def all(self, wait: float | None = None) -> list[SchemaRecord]:
        res = await self._read(lambda p: p.hgetall(RECORDS), self._wait(wait))
        if res is None:
            return list(self.records.values())
        return [SchemaRecord.model_validate_json(v) for v in res[0].values()]

    async def get_many(self, ids: list[str], wait: float | None = None) -> dict[str, SchemaRecord]:
        """The records of these ids that exist, in one round trip."""
        if not ids:
            return {}
        res = await self._read(lambda p: p.hmget(RECORDS, ids), self._wait(wait))
        if res is None:
            return {i: self.records[i] for i in ids if i in self.records}
        return {i: SchemaRecord.model_validate_json(v) for i, v in zip(ids, res[0], strict=True) if v}

    async def package_ids(
        self, package: str, origin: str | None = None, wait: float | None = None
    ) -> list[str]:
        """The ids of a package's records (of one origin, when given), sorted: its count and
        pages without reading the whole index (ig-ingest asks while storage stores)."""
        lo, hi = member_range(package, origin)
        res = await self._read(lambda p: p.zrangebylex(MEMBERS, lo, hi), self._wait(wait))
        if res is None:
            ids = [r.id for r in self.records.values() if r.package == package and origin in (None, r.origin)]
        else:
            ids = [member_id(m) for m in res[0]]
        return sorted(ids)

    async def resolve(self, ref: str, wait: float | None = None) -> str | None:
        """`url|version` exactly, or `url` -> the id of its latest version."""
        res = await self._read(lambda p: p.hget(URLS, ref), self._wait(wait))
        if res is not None:
            return as_text(res[0]) if res[0] else None
        return self.urls.get(ref)

    async def _resolve_many(self, refs: list[str], wait: float) -> dict[str, str | None]:
        res = await self._read(lambda p: p.hmget(URLS, refs), wait)
        if res is None:
            return {r: self.urls.get(r) for r in refs}
        return {r: (as_text(v) if v else None) for r, v in zip(refs, res[0], strict=True)}

    def _wait(self, wait: float | None) -> float:
        return self.settings.index_wait_seconds if wait is None else wait

    async def put(self, rec: SchemaRecord, again: bool = True) -> None:
        await self.put_many([rec], again)

    async def put_many(self, recs: list[SchemaRecord], again: bool = True) -> None:
        """Called once the records are in S3 (a rebuild then finds them). What their urls
        resolve to now is read in two round trips for the whole chunk, and they are written in
        one transaction: as if put one after the other, in this order."""
        if not recs:
            return
        long = self.settings.rebuild_claim_seconds  # the S3 copies are written: see it through
        now_ids = await self._resolve_many(list(dict.fromkeys(r.url for r in recs)), long)
        # Also the records replaced: one whose origin changes leaves its old MEMBERS entry.
        ids = {i for i in now_ids.values() if i} | {r.id for r in recs}
        known = await self.get_many(sorted(ids), long)
        latest: dict[str, SchemaRecord] = {u: known[i] for u, i in now_ids.items() if i in known}
        urls: dict[str, str] = {}
        members: dict[str, int] = {}
        stale = [m for r in recs if r.id in known and (m := member(known[r.id])) not in (None, member(r))]
        for rec in recs:
            cur = latest.get(rec.url)
            is_latest = (
                cur is None or cur.id == rec.id or version_key(rec.version) >= version_key(cur.version)
            )
            urls[f"{rec.url}|{rec.version or ''}"] = rec.id
            if is_latest:
                urls[rec.url], latest[rec.url] = rec.id, rec
            if (m := member(rec)) is not None:
                members[m] = 0
            self._remember(rec, is_latest)

        def queue(p: Any) -> None:
            p.hset(RECORDS, mapping={r.id: r.model_dump_json() for r in recs}).hset(URLS, mapping=urls)
            if stale:
                p.zrem(MEMBERS, *stale)
            if members:
                p.zadd(MEMBERS, members)

        await self._write(queue, (lambda: self.put_many(recs, again=False)) if again else None)

    def _remember(self, rec: SchemaRecord, is_latest: bool = True) -> None:
        self.records[rec.id] = rec
        self.urls[f"{rec.url}|{rec.version or ''}"] = rec.id
        cur = self.records.get(self.urls.get(rec.url, ""))
        if is_latest or cur is None or version_key(rec.version) >= version_key(cur.version):
            self.urls[rec.url] = rec.id
        INDEXED.set(len(self.records))

    async def remove(self, rec: SchemaRecord, again: bool = True) -> None:
        """Called once the record is gone from S3."""
        long = self.settings.rebuild_claim_seconds
        self.records.pop(rec.id, None)
        vkey = f"{rec.url}|{rec.version or ''}"
        drop = [vkey] if await self.resolve(vkey, long) == rec.id else []
        best: SchemaRecord | None = None
        if await self.resolve(rec.url, long) == rec.id:
            rest = [r for r in await self.all(long) if r.url == rec.url and r.id != rec.id]
            best = max(rest, key=lambda r: (version_key(r.version), r.updated)) if rest else None
            if best is None:
                drop.append(rec.url)
        for key in drop:
            self.urls.pop(key, None)
        if best is not None:
            self.urls[rec.url] = best.id
        INDEXED.set(len(self.records))

        def queue(p: Any) -> None:
            p.hdel(RECORDS, rec.id)
            if (m := member(rec)) is not None:
                p.zrem(MEMBERS, m)
            if drop:
                p.hdel(URLS, *drop)
            if best is not None:
                p.hset(URLS, rec.url, best.id)

        await self._write(queue, (lambda: self.remove(rec, again=False)) if again else None)
