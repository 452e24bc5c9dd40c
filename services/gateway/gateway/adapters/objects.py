"""ObjectStore adapter: the shared `fhirschema_bus.object_store.ObjectStore`, seen through the
gateway's async Protocol (`gateway.ports.ObjectStore`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from fhirschema_bus.contracts import ObjectRef
from fhirschema_bus.object_store import ObjectNotFound, ObjectStore
from fhirschema_bus.settings import S3Settings
from gateway.errors import BusUnavailable, NotFound


class SharedObjectStore:
    def __init__(self, settings: S3Settings, store: ObjectStore | None = None):
        self.settings = settings
        self.store = store or ObjectStore(settings)
        self._ready: set[str] = set()

    async def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/json"
    ) -> ObjectRef:
        if bucket not in self._ready:
            await self.store.aensure_buckets([bucket])
            self._ready.add(bucket)
        return await self.store.aput_bytes(bucket, key, data, content_type)

    async def get_bytes(self, ref: ObjectRef) -> bytes:
        try:
            return await self.store.aget(ref)
        except ObjectNotFound as e:
            raise NotFound(str(e)) from e

    async def iter_lines(self, ref: ObjectRef) -> AsyncIterator[bytes]:
        lines: Iterator[bytes] = self.store.iter_lines(ref.bucket, ref.key)
        done = object()
        while True:  # each blocking step in a worker thread: a large object never stalls the loop
            batch = await asyncio.to_thread(_take, lines, 256, done)
            for line in batch:
                if line is done:
                    return
                yield line  # type: ignore[misc]

    async def ping(self) -> None:
        try:
            ok = await asyncio.wait_for(self.store.aping(), 5.0)
        except TimeoutError:
            ok = False
        if not ok:
            raise BusUnavailable(f"S3 at {self.settings.endpoint} is not answering")


def _take(it: Iterator[bytes], n: int, done: object) -> list[object]:
    out: list[object] = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            out.append(done)
            break
    return out
