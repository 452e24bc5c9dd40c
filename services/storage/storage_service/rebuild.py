"""Rebuilding the schema index from S3: the Redis keys, the metrics, the mirror of a set of records
and how a rebuilt index is swapped into Redis (index.py decides when)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from fhirschema.ids import version_key
from fhirschema_bus.contracts import SchemaRecord

P = "fhirschema:storage:"
RECORDS, URLS = P + "records", P + "urls"
# A package's records, for counting and listing them without reading the whole index: a sorted
# set, every score 0, members `<package>\n<origin>\n<id>` (a lexicographic range is a package).
MEMBERS = P + "members"
# Token of the complete index in Redis; absent: Redis lost it. Versioned with the key layout: an
# index written before MEMBERS existed has no `generation.2` and is rebuilt, not adopted.
GENERATION = P + "generation.2"
REBUILDING = P + "rebuilding"  # the replica rebuilding it from S3 (set NX, expires)
CHUNK = 500  # hash fields per HSET while a rebuild fills its temporary keys

REBUILDS = Counter(
    "fhirschema_storage_index_rebuilds_total", "Schema index rebuilds from S3, by cause", ["reason"]
)
REBUILD_SECONDS = Gauge("fhirschema_storage_index_rebuild_seconds", "Duration of the last rebuild from S3")
REBUILDING_NOW = Gauge("fhirschema_storage_index_rebuilding", "1 while this replica rebuilds from S3")
INDEXED = Gauge("fhirschema_storage_index_schemas", "Schemas in this replica's index")

# Runs the commands a callable puts on one pipeline; their replies, or None (Redis unreachable).
Pipe = Callable[..., Awaitable[list[Any] | None]]


def member(rec: SchemaRecord) -> str | None:
    """The record's MEMBERS entry (None: it has no package)."""
    return f"{rec.package}\n{rec.origin}\n{rec.id}" if rec.package else None


def member_range(package: str, origin: str | None) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of a package's members (of one origin, when given)."""
    prefix = f"{package}\n{origin}\n" if origin else f"{package}\n"
    return b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff"


def member_id(m: bytes | str) -> str:
    return (m.decode() if isinstance(m, bytes) else m).rsplit("\n", 1)[-1]


def mirror(records: list[SchemaRecord]) -> tuple[dict[str, SchemaRecord], dict[str, str]]:
    """The index of these records: a url resolves to its newest version."""
    by_id: dict[str, SchemaRecord] = {}
    urls: dict[str, str] = {}
    for rec in sorted(records, key=lambda r: (version_key(r.version), r.updated)):
        by_id[rec.id] = rec
        urls[f"{rec.url}|{rec.version or ''}"] = rec.id
        urls[rec.url] = rec.id
    return by_id, urls


async def publish(
    pipe: Pipe, token: str, records: dict[str, SchemaRecord], urls: dict[str, str], ttl: int
) -> bool:
    """The index into temporary keys (expiring after `ttl` s: a crashed rebuild leaves nothing),
    swapped in with the new generation atomically. False: Redis became unreachable."""
    tmp_records, tmp_urls, tmp_members = f"{RECORDS}:{token}", f"{URLS}:{token}", f"{MEMBERS}:{token}"
    members = [(m, 0) for m in map(member, records.values()) if m is not None]
    for key, items in (
        (tmp_records, [(k, v.model_dump_json()) for k, v in records.items()]),
        (tmp_urls, list(urls.items())),
        (tmp_members, members),
    ):
        for i in range(0, len(items), CHUNK):
            chunk = dict(items[i : i + CHUNK])

            def fill(p: Any, k: str = key, c: dict[str, Any] = chunk) -> None:
                (p.zadd(k, c) if k == tmp_members else p.hset(k, mapping=c)).expire(k, ttl)

            if await pipe(fill) is None:
                return False

    def swap(p: Any) -> None:
        p.delete(RECORDS, URLS, MEMBERS)
        for tmp, key, filled in (
            (tmp_records, RECORDS, records),
            (tmp_urls, URLS, urls),
            (tmp_members, MEMBERS, members),
        ):
            if filled:
                p.rename(tmp, key).persist(key)
        p.set(GENERATION, token).delete(REBUILDING)

    return await pipe(swap, transaction=True) is not None
