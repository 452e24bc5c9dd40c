"""Where the validator gets FHIRSchemas and canonical resources from.

Remote mode: the storage service answers over NATS request/reply, with a Redis cache in front
(hits and misses counted). The engine is synchronous and runs in a worker thread, so
`RemoteSchemaSource` bridges to the event loop with `run_coroutine_threadsafe`.
Local mode: a `FhirContext` over package files (tests, offline use) — same `schema`/`resource`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import Counter
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from fhirschema.ids import canonical_url
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import SchemaDocument, SchemaQuery
from fhirschema_bus.storage import StorageFailed, decode

CACHE_HITS = Counter("fhirschema_schema_cache_hits_total", "Schema cache hits", ["kind", "layer"])
CACHE_MISSES = Counter("fhirschema_schema_cache_misses_total", "Schema cache misses", ["kind"])

NOT_FOUND = b"null"  # cached negative answer: an unknown profile is asked for on every item


class _Raw(BaseModel, extra="allow"):
    pass


class SourceUnavailable(RuntimeError):
    """Storage or cache unreachable: a transient failure, the message is retried."""


class Fetcher(Protocol):
    async def fetch(self, kind: str, ref: str) -> dict[str, Any] | None: ...


class StorageClient:
    """Storage request/reply over core NATS."""

    def __init__(self, nc: Client, timeout: float = 5.0) -> None:
        self._nc = nc
        self._timeout = timeout

    async def fetch(self, kind: str, ref: str) -> dict[str, Any] | None:
        if kind == "schema":
            subject, body = s.STORAGE_GET_SCHEMA, SchemaQuery(url=canonical_url(ref)).model_dump_json()
        else:
            subject, body = s.STORAGE_GET_RESOURCE, orjson.dumps({"url": ref}).decode()
        try:
            reply = await self._nc.request(subject, body.encode(), timeout=self._timeout)
        except (NatsTimeout, NoRespondersError) as e:
            raise SourceUnavailable(f"storage did not answer {subject} for {ref}: {e!r}") from e
        try:
            if kind == "schema":
                return decode(reply.data, SchemaDocument).schema_
            return decode(reply.data, _Raw).model_dump()
        except StorageFailed as e:
            if e.status >= 500:  # S3 behind storage is down: retry later
                raise SourceUnavailable(f"storage: {e.message}") from e
            return None  # 404 (unknown url) or 400


class RedisCached:
    """Redis in front of a Fetcher; tenacity retries Redis, then the cache is skipped."""

    def __init__(self, inner: Fetcher, redis: Redis, ttl: int, prefix: str = "fhirschema:") -> None:
        self._inner, self._redis, self._ttl, self._prefix = inner, redis, ttl, prefix

    async def fetch(self, kind: str, ref: str) -> dict[str, Any] | None:
        key = f"{self._prefix}{kind}:{ref}"
        cached = await self._retry(self._redis.get, key)
        if cached is not None:
            CACHE_HITS.labels(kind, "redis").inc()
            return orjson.loads(cached)
        CACHE_MISSES.labels(kind).inc()
        value = await self._inner.fetch(kind, ref)
        # Negative answers live shorter: a schema uploaded later must become visible soon.
        ttl = self._ttl if value is not None else min(self._ttl, 60)
        await self._retry(self._redis.set, key, orjson.dumps(value) if value else NOT_FOUND, ex=ttl)
        return value

    async def _retry(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((RedisError, OSError)),
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.05, max=0.5),
                reraise=True,
            ):
                with attempt:
                    return await fn(*args, **kw)
        except (RedisError, OSError) as e:
            raise SourceUnavailable(f"redis: {e!r}") from e
        return None


class RemoteSchemaSource:
    """The engine's SchemaSource (sync) over an async Fetcher running on `loop`.

    A small in-process TTL cache sits in front: one validation asks for the same few type
    schemas many times, and each Redis round trip from a thread costs a loop hop.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = 10.0,
        ttl: float = 300.0,
        size: int = 4096,
    ) -> None:
        self._fetcher, self._loop, self._timeout = fetcher, loop, timeout
        self._ttl, self._size = ttl, size
        self._memo: OrderedDict[tuple[str, str], tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def schema(self, ref: str) -> dict[str, Any] | None:
        return self._get("schema", ref)

    def resource(self, url: str) -> dict[str, Any] | None:
        return self._get("resource", url)

    def _get(self, kind: str, ref: str) -> dict[str, Any] | None:
        key = (kind, ref)
        with self._lock:
            hit = self._memo.get(key)
            if hit is not None and hit[0] > time.monotonic():
                self._memo.move_to_end(key)
                CACHE_HITS.labels(kind, "memory").inc()
                return hit[1]
        if _on_loop(self._loop):
            raise RuntimeError("RemoteSchemaSource must be used from a worker thread, not the loop")
        future = asyncio.run_coroutine_threadsafe(self._fetcher.fetch(kind, ref), self._loop)
        try:
            value = future.result(self._timeout)
        except TimeoutError as e:
            future.cancel()
            raise SourceUnavailable(f"{kind} {ref}: no answer in {self._timeout}s") from e
        with self._lock:
            self._memo[key] = (time.monotonic() + self._ttl, value)
            while len(self._memo) > self._size:
                self._memo.popitem(last=False)
        return value


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
