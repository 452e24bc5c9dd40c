"""The NATS connection: JetStream publishing with ack, and one reply inbox per gateway instance.

Synchronous requests (POST /validate, POST /convert/structuredefinition, the WebSocket) publish
a request whose `reply_to` is `<inbox>.<job id>`; the gateway subscribes to `<inbox>.*` once at
start-up and hands each reply to the future waiting for that job id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from fhirschema_bus.contracts import HEADER_CORRELATION_ID, HEADER_MSG_ID
from fhirschema_bus.credentials import nats_options, redact_url
from fhirschema_bus.settings import NatsSettings
from fhirschema_bus.topology import ensure_topology
from fhirschema_bus.tracing import outgoing
from gateway.errors import BusUnavailable

log = logging.getLogger("gateway.bus")

LateReply = Callable[[str, bytes], Awaitable[None]]
NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError)
RETRY_AFTER_SECONDS = 5  # what a 503 tells clients: NATS reconnects within about that time
ACK_WAIT_SECONDS = 10.0  # for the acks of one round of publishes
T = TypeVar("T")


class ReplyRouter:
    """Routes replies on `<inbox>.<job id>` to the future registered for that job id."""

    def __init__(self) -> None:
        self.prefix = ""
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self.on_late: LateReply | None = None

    def subject(self, job_id: str) -> str:
        return f"{self.prefix}.{job_id}"

    def expect(self, job_id: str) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = fut
        return fut

    def forget(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def on_msg(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        fut = self._waiting.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)
        elif self.on_late is not None:
            try:
                await self.on_late(job_id, msg.data)
            except Exception:
                log.exception("late reply for %s could not be recorded", job_id)


class Bus:
    def __init__(self, settings: NatsSettings, name: str = "fhirschema-gateway", budget: float = 30.0):
        self.settings = settings
        self.name = name
        self.budget = budget  # seconds a batch's publishing is retried across a NATS outage
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.replies = ReplyRouter()
        self._retry: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None or not self.connected:
            raise BusUnavailable("NATS is unavailable", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return self._js

    @property
    def client(self) -> Client:
        if self.nc is None or not self.nc.is_connected:
            raise BusUnavailable("NATS is unavailable", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return self.nc

    async def start(self) -> None:
        """Connect now if NATS is up, else keep trying in the background (the app still serves)."""
        try:
            await self._connect()
        except NATS_ERRORS as e:
            log.warning(
                "NATS not reachable at %s (%s); retrying in the background", redact_url(self.settings.url), e
            )
            self._retry = asyncio.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._connect()
                return
            except NATS_ERRORS:
                continue

    async def _connect(self) -> None:
        nc = await nats.connect(
            self.settings.url,
            **nats_options(self.settings),  # credentials and TLS (fhirschema_bus/credentials.py)
            name=self.name,
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=1,  # the first connect fails fast; start() retries
            allow_reconnect=True,
            error_cb=self._on_error,
        )
        nc.options["max_reconnect_attempts"] = -1  # once connected: reconnect forever
        try:
            js = nc.jetstream()
            await ensure_topology(js, self.settings)
            self.replies.prefix = nc.new_inbox()
            await nc.subscribe(f"{self.replies.prefix}.*", cb=self.replies.on_msg)
        except BaseException:
            await nc.close()
            raise
        self.nc, self._js = nc, js

    async def _on_error(self, e: Exception) -> None:
        log.warning("NATS: %s", e or type(e).__name__)

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self.nc is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self.nc.drain()
            self.nc = self._js = None

    async def publish(self, subject: str, payload: bytes, msg_id: str, timeout: float = 5.0) -> None:
        """Publish to JetStream and wait for the stream's ack (de-duplicated by `msg_id`)."""
        js = self.js
        try:
            ack = await js.publish_async(subject, payload, headers=_headers(msg_id))
            await asyncio.wait_for(ack, timeout)
        except (TimeoutError, *NATS_ERRORS) as e:
            raise BusUnavailable(
                f"NATS did not accept the message on {subject}: {e or type(e).__name__}",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from e

    async def wait_connected(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until NATS is connected again; False if it is not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.connected:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def retrying(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """`op()`, tried again across a NATS outage until the budget is spent; then a 503 with
        Retry-After. `op` must be safe to repeat (a Nats-Msg-Id, or a read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        while True:
            try:
                return await op()
            except (BusUnavailable, TimeoutError, *NATS_ERRORS) as e:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self.unavailable(what, e) from e
                log.warning("%s: %s; retrying for another %.0f s", what, e or type(e).__name__, remaining)
                await self.wait_connected(remaining)
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))

    def unavailable(self, what: str, e: BaseException) -> BusUnavailable:
        return BusUnavailable(
            f"{what}: NATS did not accept it within {self.budget:g} s ({e or type(e).__name__}); "
            "retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )  # fmt: skip

    async def publish_many(self, messages: Iterable[tuple[str, bytes, str]]) -> None:
        """Pipelined publishes (no wait per message), all acks awaited at the end. Across a NATS
        outage, the messages not acked are published again once it is back (their Nats-Msg-Id
        makes the stream store each once) until the budget is spent: then BusUnavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        rest = iter(messages)  # a generator: chunks are cut while the first ones are consumed
        unacked: list[tuple[tuple[str, bytes, str], asyncio.Future[Any] | None]] = []
        while True:
            again = [m for m, ack in unacked if not _acked(ack)]
            unacked = []
            try:
                js = self.js
                for message in itertools.chain(again, rest):
                    unacked.append((message, None))  # known before its publish can fail
                    subject, payload, msg_id = message
                    ack = await js.publish_async(subject, payload, headers=_headers(msg_id), wait_stall=5.0)
                    unacked[-1] = (message, ack)
                    await asyncio.sleep(0)  # let the client flush it now: consumers start while we pack
                acks = [ack for _, ack in unacked if ack is not None]
                timeout = max(0.1, min(ACK_WAIT_SECONDS, deadline - loop.time()))
                await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), timeout)
                if all(_acked(ack) for _, ack in unacked):
                    return
                raise nats.errors.Error("some messages were not acknowledged")
            except (BusUnavailable, TimeoutError, *NATS_ERRORS) as e:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self.unavailable("publishing the batch", e) from e
                waiting = sum(not _acked(ack) for _, ack in unacked)
                log.warning("publishing: %s; %d messages to send again", e or type(e).__name__, waiting)
                await self.wait_connected(remaining)

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """Core NATS request/reply (storage lookups, ig-ingest's schedule and search). No
        responder (the service is not running) and a time-out are 503s a client may retry."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        try:
            msg = await self.client.request(subject, payload, timeout=timeout, headers=outgoing())
        except nats.errors.NoRespondersError as e:
            raise BusUnavailable(f"no service answers on {subject}", headers=retry) from e
        except (TimeoutError, *NATS_ERRORS) as e:
            raise BusUnavailable(
                f"request on {subject} failed: {e or type(e).__name__}", headers=retry
            ) from e
        return msg.data

    async def ping(self) -> None:
        try:
            await self.client.flush(timeout=2)
        except (TimeoutError, *NATS_ERRORS) as e:
            raise BusUnavailable(f"NATS: {e or type(e).__name__}") from e


def _acked(ack: asyncio.Future[Any] | None) -> bool:
    return ack is not None and ack.done() and not ack.cancelled() and ack.exception() is None


def _headers(msg_id: str) -> dict[str, str]:
    # The request's trace context and ids travel with it (tracing.outgoing).
    return outgoing({HEADER_MSG_ID: msg_id, HEADER_CORRELATION_ID: msg_id})
