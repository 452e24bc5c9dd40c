"""The schema index (id -> SchemaRecord, `url|version` and `url` -> id, canonical url -> package
entry) and a schema cache, shared by replicas through Redis and mirrored in memory.

Redis is the shared view (every replica reads it first); the in-memory mirror answers when Redis
is unreachable, so lookups keep working. The durable copy is in S3 (see repository.py), from
which the index is rebuilt when Redis is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from fhirschema.ids import version_key
from fhirschema_bus.contracts import SchemaRecord

log = logging.getLogger("storage.index")
T = TypeVar("T")

P = "fhirschema:storage:"
RECORDS, URLS, RESOURCES, LOADED = P + "records", P + "urls", P + "resources", P + "loaded"
SCHEMA = P + "schema:"  # + id -> schema JSON (TTL)


class KV(Protocol):
    """The Redis commands we use (redis.asyncio.Redis satisfies it)."""

    def hget(self, name: str, key: str) -> Awaitable[Any]: ...
    def hset(
        self, name: str, key: str | None = None, value: Any = None, mapping: Any = None
    ) -> Awaitable[Any]: ...
    def hdel(self, name: str, *keys: str) -> Awaitable[Any]: ...
    def hgetall(self, name: str) -> Awaitable[Any]: ...
    def get(self, name: str) -> Awaitable[Any]: ...
    def set(self, name: str, value: Any, ex: int | None = None) -> Awaitable[Any]: ...
    def delete(self, *names: str) -> Awaitable[Any]: ...
    def ping(self) -> Awaitable[Any]: ...


class SchemaIndex:
    def __init__(self, redis: KV | None, ttl: int = 3600, attempts: int = 2) -> None:
        self.redis = redis
        self.ttl = ttl
        self.attempts = attempts
        self.records: dict[str, SchemaRecord] = {}
        self.urls: dict[str, str] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, bytes] = {}  # small in-process schema cache (fallback when Redis is down)
        self.hits = self.misses = 0

    @classmethod
    def from_url(cls, url: str, ttl: int) -> SchemaIndex:
        client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        return cls(client, ttl)

    async def _r(self, op: Callable[[KV], Awaitable[T]]) -> T | None:
        """A Redis call with retries; None (and a warning) when Redis stays unreachable."""
        if self.redis is None:
            return None
        redis_ = self.redis
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=0.05, max=0.5),
                retry=retry_if_exception_type(
                    (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
                ),
                reraise=True,
            ):
                with attempt:
                    return await op(redis_)
        except (redis.exceptions.RedisError, OSError) as e:
            log.warning("redis unavailable, using the in-memory index: %s", e)
        return None

    async def ping(self) -> bool:
        return bool(await self._r(lambda r: r.ping()))

    # --- records ----------------------------------------------------------------------------

    async def loaded(self) -> bool:
        return bool(await self._r(lambda r: r.get(LOADED)))

    async def mark_loaded(self) -> None:
        await self._r(lambda r: r.set(LOADED, b"1"))

    async def load_from_redis(self) -> None:
        recs = await self._r(lambda r: r.hgetall(RECORDS)) or {}
        for raw in recs.values():
            self._remember(SchemaRecord.model_validate_json(raw))
        for url, entry in (await self._r(lambda r: r.hgetall(RESOURCES)) or {}).items():
            self.resources[_s(url)] = orjson.loads(entry)

    async def get(self, record_id: str) -> SchemaRecord | None:
        raw = await self._r(lambda r: r.hget(RECORDS, record_id))
        if raw:
            return SchemaRecord.model_validate_json(raw)
        return self.records.get(record_id)

    async def all(self) -> list[SchemaRecord]:
        recs = await self._r(lambda r: r.hgetall(RECORDS))
        if recs is None:
            return list(self.records.values())
        return [SchemaRecord.model_validate_json(v) for v in recs.values()]

    async def resolve(self, ref: str) -> str | None:
        """`url|version` exactly, or `url` -> the id of its latest version."""
        found = await self._r(lambda r: r.hget(URLS, ref))
        return _s(found) if found else self.urls.get(ref)

    async def put(self, rec: SchemaRecord) -> None:
        latest_id = await self.resolve(rec.url)
        latest = await self.get(latest_id) if latest_id and latest_id != rec.id else None
        is_latest = latest is None or version_key(rec.version) >= version_key(latest.version)
        urls = {f"{rec.url}|{rec.version or ''}": rec.id}
        if is_latest:
            urls[rec.url] = rec.id
        self._remember(rec, is_latest)
        await self._r(lambda r: r.hset(RECORDS, rec.id, rec.model_dump_json()))
        await self._r(lambda r: r.hset(URLS, mapping=urls))

    def _remember(self, rec: SchemaRecord, is_latest: bool = True) -> None:
        self.records[rec.id] = rec
        self.urls[f"{rec.url}|{rec.version or ''}"] = rec.id
        cur = self.records.get(self.urls.get(rec.url, ""))
        if is_latest or cur is None or version_key(rec.version) >= version_key(cur.version):
            self.urls[rec.url] = rec.id

    async def remove(self, rec: SchemaRecord) -> None:
        self.records.pop(rec.id, None)
        await self._r(lambda r: r.hdel(RECORDS, rec.id))
        await self.drop_schema(rec.id)
        vkey = f"{rec.url}|{rec.version or ''}"
        if await self.resolve(vkey) == rec.id:
            self.urls.pop(vkey, None)
            await self._r(lambda r: r.hdel(URLS, vkey))
        if await self.resolve(rec.url) == rec.id:
            rest = [r for r in await self.all() if r.url == rec.url and r.id != rec.id]
            if rest:
                best = max(rest, key=lambda r: (version_key(r.version), r.updated))
                self.urls[rec.url] = best.id
                await self._r(lambda r: r.hset(URLS, rec.url, best.id))
            else:
                self.urls.pop(rec.url, None)
                await self._r(lambda r: r.hdel(URLS, rec.url))

    # --- schema cache -----------------------------------------------------------------------

    async def cached_schema(self, record_id: str) -> bytes | None:
        raw = await self._r(lambda r: r.get(SCHEMA + record_id))
        raw = raw or self.schemas.get(record_id)
        if raw:
            self.hits += 1
        else:
            self.misses += 1
        return raw

    async def cache_schema(self, record_id: str, raw: bytes) -> None:
        if len(self.schemas) > 2000:
            self.schemas.pop(next(iter(self.schemas)))
        self.schemas[record_id] = raw
        await self._r(lambda r: r.set(SCHEMA + record_id, raw, ex=self.ttl))

    async def drop_schema(self, record_id: str) -> None:
        self.schemas.pop(record_id, None)
        await self._r(lambda r: r.delete(SCHEMA + record_id))

    # --- raw canonical resources (entries of stored package tarballs) -----------------------

    async def put_resources(self, entries: dict[str, dict[str, Any]]) -> None:
        self.resources.update(entries)
        if entries:
            mapping = {k: orjson.dumps(v) for k, v in entries.items()}
            await self._r(lambda r: r.hset(RESOURCES, mapping=mapping))

    async def drop_resources(self, package: str) -> None:
        urls = [url for url, ref in self.resources.items() if ref.get("package") == package]
        for raw_url, raw in (await self._r(lambda r: r.hgetall(RESOURCES)) or {}).items():
            if orjson.loads(raw).get("package") == package:
                urls.append(_s(raw_url))
        for url in set(urls):
            self.resources.pop(url, None)
        if urls:
            await self._r(lambda r: r.hdel(RESOURCES, *set(urls)))

    async def resource(self, url: str) -> dict[str, Any] | None:
        raw = await self._r(lambda r: r.hget(RESOURCES, url))
        return orjson.loads(raw) if raw else self.resources.get(url)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
