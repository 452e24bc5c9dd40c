"""The schema index (id -> SchemaRecord, `url|version` and `url` -> id), shared by replicas
through Redis and mirrored in memory.

Redis is the shared view (every replica reads it first); the in-memory mirror answers when Redis
is unreachable, so lookups keep working. The durable copy is in S3 (see repository.py), from
which the index is rebuilt when Redis is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from fhirschema.ids import version_key
from fhirschema_bus.contracts import SchemaRecord

log = logging.getLogger("storage.index")
T = TypeVar("T")

P = "fhirschema:storage:"
RECORDS, URLS, LOADED = P + "records", P + "urls", P + "loaded"


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
    def __init__(self, redis: KV | None, attempts: int = 2) -> None:
        self.redis = redis
        self.attempts = attempts
        self.records: dict[str, SchemaRecord] = {}
        self.urls: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str) -> SchemaIndex:
        client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        return cls(client)

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


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
