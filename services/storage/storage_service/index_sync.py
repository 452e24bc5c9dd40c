"""The schema index's plumbing: its Redis calls, and keeping the in-memory mirror and Redis'
index complete (index.py has the records). Redis holds a cache that can always be rebuilt: the
durable copy is S3 (durable.py).

Redis losing the index (restarted without persistence, flushed, failed over) is detected by its
generation key: storage writes a fresh token there when it has put a complete index in Redis, and
every read and write fetches it in the same round trip, as does a check every
`index_check_seconds`. No generation (Redis lost it), or writes of ours that missed Redis while it
was unreachable, and the index is rebuilt from S3 before anything is answered from it: requests
wait (up to `index_wait_seconds`, then 503), the worker is not ready meanwhile, and the rebuild is
logged and counted. Another generation than ours means another replica rebuilt it: the mirror is
reloaded from Redis. While Redis is unreachable the mirror answers (it is complete: loaded or
rebuilt from S3).

Several replicas: the first to claim `REBUILDING` (expires) rebuilds into temporary keys and
swaps them in atomically with the new generation; the others wait for it and reload. A write that
sees the claim may have been missed by the rebuild's S3 listing: it is applied again after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from fhirschema_bus.contracts import SchemaRecord
from fhirschema_bus.settings import StorageSettings
from storage_service.rebuild import (
    GENERATION,
    INDEXED,
    REBUILD_SECONDS,
    REBUILDING,
    REBUILDING_NOW,
    REBUILDS,
    RECORDS,
    URLS,
    mirror,
    publish,
)  # fmt: skip

log = logging.getLogger("storage.index")
T = TypeVar("T")

Source = Callable[[], Awaitable[list[SchemaRecord]]]  # every record, from the durable copy
Listener = Callable[[str | None], Awaitable[None]]  # why lookups cannot be answered, or None


class KV(Protocol):
    """The Redis commands we use (redis.asyncio.Redis satisfies it)."""

    def pipeline(self, transaction: bool = True) -> Any: ...
    def ping(self) -> Awaitable[Any]: ...


class IndexUnavailable(Exception):
    """The index is being rebuilt from S3 and was not ready within the request's wait."""


class IndexSync:
    def __init__(self, redis: KV | None, attempts: int = 2, settings: StorageSettings | None = None) -> None:
        self.redis = redis
        self.attempts = attempts
        self.settings = settings or StorageSettings()
        self.records: dict[str, SchemaRecord] = {}
        self.urls: dict[str, str] = {}
        self.generation: str | None = None  # the generation in Redis the mirror matches
        self.complete = redis is None  # the mirror holds the whole index (without Redis: it is it)
        self.dirty = False  # a write missed Redis: Redis is rebuilt from S3 when reachable
        self.listener: Listener | None = None
        self._source: Source | None = None
        self._sync: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._reachable = True

    @classmethod
    def from_url(cls, url: str, settings: StorageSettings | None = None, **options: Any) -> Self:
        """`options`: credentials and TLS (fhirschema_bus.credentials.redis_options)."""
        client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0, **options)
        return cls(client, settings=settings)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, source: Source) -> None:
        """Adopt Redis' index or rebuild it from `source`; then keep checking its generation."""
        self._source = source
        if self.redis is None:  # no shared index: the mirror is all there is
            await self._rebuild("start", "no Redis configured")
            return
        await self.check(wait=None)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watching(), name="schema-index-watch")

    async def close(self) -> None:
        for task in (self._watch, self._sync):
            if task is not None:
                task.cancel()
        self._watch = self._sync = None

    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_check_seconds)
            try:
                await self.check(wait=None)
            except Exception as e:  # S3 down during a rebuild: the next check tries again
                log.warning("schema index not rebuilt yet: %s", e)

    async def check(self, wait: float | None) -> None:
        """Is the mirror complete and Redis' index ours? If not, sync (and wait for it)."""
        if self.redis is None or (self._sync is not None and not self._sync.done()):
            return
        res = await self._pipe(lambda p: p.get(GENERATION), quiet=True)
        if res is None:
            if not self.complete:
                await self.resync(None, wait)
            return
        gen = as_text(res[0]) if res[0] else None
        if not self.complete or self.dirty or gen != self.generation:
            await self.resync(gen, wait)

    async def ping(self) -> bool:
        return self.redis is not None and bool(await self._r(lambda r: r.ping()))

    # --- Redis calls --------------------------------------------------------------------------

    async def _r(self, op: Callable[[KV], Awaitable[T]], quiet: bool = False) -> T | None:
        """A Redis call with retries (`quiet`: one attempt); None when Redis stays unreachable
        (said once, as is its return)."""
        if self.redis is None:
            return None
        redis_ = self.redis
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(1 if quiet else self.attempts),
                wait=wait_exponential(multiplier=0.05, max=0.5),
                retry=retry_if_exception_type(
                    (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
                ),
                reraise=True,
            ):
                with attempt:
                    result = await op(redis_)
        except (redis.exceptions.RedisError, OSError) as e:
            if self._reachable:
                log.warning("redis unreachable, lookups answered from the in-memory index: %s", e)
            self._reachable = False
            return None
        if not self._reachable:
            log.info("redis reachable again: checking its index generation")
            self._reachable = True
        return result

    async def _pipe(
        self, queue: Callable[[Any], object], transaction: bool = False, quiet: bool = False
    ) -> list[Any] | None:
        """The replies of the commands `queue` puts on one pipeline (one round trip)."""

        async def run(r: KV) -> list[Any]:
            async with r.pipeline(transaction=transaction) as p:
                queue(p)
                return list(await p.execute())

        return await self._r(run, quiet)

    async def _read(self, queue: Callable[[Any], object], wait: float | None) -> list[Any] | None:
        """`queue`'s replies, read with the generation; None: the mirror answers (Redis is
        unreachable, or changed again while we synced)."""
        await self._settled(wait)
        for _ in range(2):
            res = await self._pipe(lambda p: (p.get(GENERATION), queue(p)))
            if res is None:
                if not self.complete:  # never answer from a partial mirror: rebuild it from S3
                    await self.resync(None, wait)
                return None
            gen = as_text(res[0]) if res[0] else None
            if self.complete and not self.dirty and gen == self.generation:
                return res[1:]
            await self.resync(gen, wait)
        return None

    async def _write(
        self, queue: Callable[[Any], object], again: Callable[[], Awaitable[None]] | None
    ) -> None:
        res = await self._pipe(
            lambda p: (queue(p), p.get(GENERATION), p.exists(REBUILDING)), transaction=True
        )
        if res is None:
            self.dirty = True  # in S3 and the mirror: Redis is rebuilt once reachable
            return
        gen, rebuilding = (as_text(res[-2]) if res[-2] else None), bool(res[-1])
        if rebuilding or gen != self.generation:
            # A rebuild's S3 listing may have preceded this write: once it is done, write again.
            await self.resync(None if rebuilding else gen, self.settings.rebuild_claim_seconds)
            if again is not None:
                await again()

    # --- syncing ------------------------------------------------------------------------------

    async def resync(self, seen: str | None, wait: float | None) -> None:
        """Reload from Redis (`seen`: a complete index another replica built) or rebuild from S3;
        one sync at a time, waited for up to `wait` seconds (None: until done)."""
        if self._sync is None or self._sync.done():
            self._sync = asyncio.create_task(self._resync(seen), name="schema-index-sync")
        await _finished(self._sync, wait)

    async def _settled(self, wait: float | None) -> None:
        """Wait for a sync in progress, if any."""
        if self._sync is not None and not self._sync.done():
            await _finished(self._sync, wait)

    async def _resync(self, seen: str | None) -> None:
        if seen is not None and not self.dirty and await self._adopt():
            return
        if self.dirty:
            why = ("missed-writes", "writes missed Redis while it was unreachable")
        elif not self._reachable:
            why = ("redis-unreachable", "Redis is unreachable and no index is loaded")
        elif self.generation is None and not self.complete:
            why = ("start", "Redis holds no index")
        else:
            why = ("redis-lost", "Redis lost the index (no generation key: restarted empty or flushed)")
        await self._rebuild(*why)

    async def _adopt(self) -> bool:
        """The complete index in Redis becomes the mirror (False: there is none, or unreachable)."""
        res = await self._pipe(lambda p: (p.get(GENERATION), p.hgetall(RECORDS), p.hgetall(URLS)), True)
        if res is None or not res[0]:
            return False
        self.records = {as_text(k): SchemaRecord.model_validate_json(v) for k, v in res[1].items()}
        self.urls = {as_text(k): as_text(v) for k, v in res[2].items()}
        self.generation, self.complete = as_text(res[0]), True
        INDEXED.set(len(self.records))
        log.info(
            "schema index loaded from Redis: %d schemas (generation %s)", len(self.records), self.generation
        )
        return True

    async def _rebuild(self, reason: str, why: str) -> None:
        """Not ready meanwhile; said in the log and counted (`reason`) once done."""
        if self._source is None:
            raise IndexUnavailable("the schema index has not been started")
        self.complete = False
        REBUILDING_NOW.set(1)
        await self._notify(f"rebuilding the schema index from S3: {why}")
        try:
            await self._rebuild_from(self._source, reason, why)
        except BaseException as e:
            await self._notify(f"the schema index could not be rebuilt from S3 ({why}): {e}")
            raise
        finally:
            REBUILDING_NOW.set(0)
        await self._notify(None)

    async def _rebuild_from(self, source: Source, reason: str, why: str) -> None:
        t0 = time.monotonic()
        token = uuid.uuid4().hex
        claim = await self._pipe(lambda p: (
            p.set(REBUILDING, token, nx=True, ex=int(self.settings.rebuild_claim_seconds)),
            p.get(REBUILDING),
        ))  # fmt: skip
        holder = (as_text(claim[1]) if claim[1] else token) if claim is not None else token
        if holder != token and await self._other_rebuilds():
            return
        records = await source()
        self.records, self.urls = mirror(records)
        written = (
            await publish(
                self._pipe, token, self.records, self.urls, int(self.settings.rebuild_claim_seconds)
            )
            if claim is not None
            else False
        )
        self.complete, self.dirty = True, not written
        self.generation = token if written else None
        elapsed = time.monotonic() - t0
        REBUILDS.labels(reason).inc()
        REBUILD_SECONDS.set(elapsed)
        INDEXED.set(len(self.records))
        log.warning(
            "schema index rebuilt from S3: %d schemas in %.1f s (%s)%s", len(records), elapsed, why,
            "" if written else "; Redis unreachable: written there once it is back",
        )  # fmt: skip

    async def _other_rebuilds(self) -> bool:
        """Another replica claimed the rebuild: wait for its generation and reload (False: it
        gave up or took too long; we rebuild ourselves)."""
        deadline = time.monotonic() + self.settings.rebuild_claim_seconds
        while time.monotonic() < deadline:
            res = await self._pipe(lambda p: (p.get(GENERATION), p.exists(REBUILDING)))
            if res is None:
                return False
            if res[0] and not res[1]:
                return await self._adopt()
            await asyncio.sleep(0.1)
        return False

    async def _notify(self, reason: str | None) -> None:
        if self.listener is not None:
            await self.listener(reason)


async def _finished(task: asyncio.Task[None], wait: float | None) -> None:
    """`task` done (its exception raised here), or IndexUnavailable after `wait` seconds."""
    try:
        await asyncio.wait_for(asyncio.shield(task), wait)
    except TimeoutError:
        raise IndexUnavailable(
            "the schema index is being rebuilt from S3 (Redis lost it): retry in a few seconds"
        ) from None


def as_text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
