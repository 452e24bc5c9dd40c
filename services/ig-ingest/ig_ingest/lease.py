"""The scheduler's leader lease: one key in NATS KV, taken and renewed compare-and-set.

The holder rewrites the key (a new revision) every renewal. Another replica takes the lease over
only when the revision it sees has not changed for `ttl` seconds of *its own* monotonic clock:
no wall-clock comparison between machines, so clock skew cannot make two leaders. Every write is
revision-checked (create-only when absent, update-from-the-revision-read otherwise): of two
replicas racing for a free or stale lease exactly one wins. A holder that stops cleanly deletes
the key (revision-checked) so the next one need not wait out the TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("ig_ingest.lease")
LEASE_KEY = "lease"


class Lease:
    def __init__(
        self, kv: KeyValue, holder: str, ttl: float, key: str = LEASE_KEY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.kv, self.holder, self.ttl, self.key, self.clock = kv, holder, ttl, key, clock
        self.revision: int | None = None  # ours, while we hold it
        self._seen: tuple[int, float] | None = None  # another's revision and when we first saw it

    @property
    def held(self) -> bool:
        return self.revision is not None

    def _body(self) -> bytes:
        return orjson.dumps({"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                             "at": time.time()})  # fmt: skip

    async def acquire(self) -> bool:
        """Take, renew or observe the lease; True while this replica holds it."""
        try:
            entry = await self.kv.get(self.key)
            revision, value = entry.revision, entry.value
        except KeyNotFoundError:  # absent, or deleted by a holder that stopped (create handles both)
            revision, value = None, None
        try:
            if not value:
                self.revision = await self._write(None)
                log.info("leader lease taken by %s", self.holder)
                return True
            if self.revision is not None and revision == self.revision:
                self.revision = await self._write(revision)  # renew
                return True
            if self.revision is not None:
                log.warning(
                    "leader lease lost by %s (revision %s, now %s)", self.holder, self.revision, revision
                )
                self.revision = None
            if self._seen is None or self._seen[0] != revision:
                self._seen = (revision or 0, self.clock())  # the holder is alive: it wrote since
                return False
            if self.clock() - self._seen[1] < self.ttl:
                return False
            self.revision = await self._write(revision)  # stale: the holder stopped renewing
            stale = orjson.loads(value).get("holder", "?")
            log.warning(
                "leader lease taken over by %s from %s (not renewed for %.1f s)", self.holder, stale, self.ttl
            )
            return True
        except KeyWrongLastSequenceError:  # another replica wrote first
            self.revision, self._seen = None, None
            return False

    async def _write(self, revision: int | None) -> int:
        if revision is None:
            return int(await self.kv.create(self.key, self._body()))
        return int(await self.kv.update(self.key, self._body(), last=revision))

    async def release(self) -> None:
        if self.revision is None:
            return
        try:
            await self.kv.delete(self.key, last=self.revision)
            log.info("leader lease released by %s", self.holder)
        except Exception as e:  # taken over meanwhile, or NATS gone: the TTL frees it
            log.info("leader lease not released by %s: %s", self.holder, e)
        self.revision = None
