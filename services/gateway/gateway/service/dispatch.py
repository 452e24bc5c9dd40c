"""Shared plumbing of the service layer: job ids, payload references, request/reply, fan-out."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from fhirschema_bus import logs
from fhirschema_bus.contracts import INLINE_LIMIT, ObjectRef
from gateway.bus import Bus
from gateway.ports import JobStore, ObjectStore

JobsProvider = Callable[[], Awaitable[JobStore]]


def new_job_id() -> str:
    """A new job's id, bound for the logs of the request that creates it (and, through the
    messages' headers, of the workers that handle them)."""
    job_id = os.urandom(16).hex()  # 128 random bits as uuid4().hex, at a tenth of its cost
    logs.job_id.set(job_id)  # in this request's context only (each request runs in its own)
    return job_id


class ReplyTimeout(Exception):
    def __init__(self, job_id: str, future: asyncio.Future[bytes]):
        super().__init__(job_id)
        self.job_id = job_id
        self.future = future


class Dispatcher:
    def __init__(self, bus: Bus, objects: ObjectStore, payload_bucket: str, jobs: JobsProvider):
        self.bus = bus
        self.objects = objects
        self.payload_bucket = payload_bucket
        self.jobs = jobs

    async def payload(
        self, job_id: str, index: int, resource: Any, raw: bytes | None = None
    ) -> tuple[str, Any]:
        """("resource", the resource) inline, or ("resource_ref", an S3 ref) when it is too large."""
        size = len(raw) if raw is not None else len(orjson.dumps(resource))
        if size <= INLINE_LIMIT:
            return "inline", resource
        data = raw if raw is not None else orjson.dumps(resource)
        ref: ObjectRef = await self.objects.put_bytes(self.payload_bucket, f"{job_id}/{index}.json", data)
        return "ref", ref.model_dump()

    async def call(self, subject: str, job_id: str, message: bytes, timeout: float) -> bytes:
        """Publish (acked) with reply_to = our inbox, then wait for the reply.

        Raises `ReplyTimeout`; the waiter then stays registered until the caller `settle`s it,
        so the caller decides what happens to a reply that arrives later."""
        fut = self.bus.replies.expect(job_id)
        try:
            await self.bus.publish(subject, message, msg_id=job_id)
        except BaseException:
            self.bus.replies.forget(job_id)
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ReplyTimeout(job_id, fut) from None
        except BaseException:
            self.bus.replies.forget(job_id)
            raise

    def settle(self, timeout: ReplyTimeout) -> bytes | None:
        """Stop waiting; returns the reply if it slipped in meanwhile."""
        self.bus.replies.forget(timeout.job_id)
        fut = timeout.future
        if fut.done() and not fut.cancelled():
            return fut.result()
        fut.cancel()
        return None

    def reply_to(self, job_id: str) -> str:
        return self.bus.replies.subject(job_id)
