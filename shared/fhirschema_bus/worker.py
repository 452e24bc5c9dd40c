"""The shared FastStream bootstrap for workers (validator, converter, ...).

`Worker` owns what every worker process needs: the NatsBroker (connected from NatsSettings), the
JetStream topology ensured before any subscriber binds its durable consumer, a heartbeat in
`KV_SERVICES`, an HTTP endpoint (`/health`, `/ready`, `/metrics` on `FHIRSCHEMA_WORKER_HTTP_PORT`,
probes.py), its readiness, and one acknowledgement policy for all JetStream messages
(`ReliableConsume`):

- handler returned → ack;
- malformed payload (JSON / pydantic ValidationError) or `PermanentError` → dead letter + TERM;
- any other exception → NAK with the configured backoff, and a dead letter once the message has
  reached `NatsSettings.max_deliver` deliveries.

Subscribers are declared with `ack_policy=AckPolicy.MANUAL` so that FastStream leaves acks to us.
Nothing connects at import time; `Worker.run()` handles SIGTERM/SIGINT (graceful shutdown).

Readiness gates work: subscribers registered with `gated()` pull no message while the worker is
not ready (`set_readiness`). At start-up the broker starts them only once the worker is ready
(start-up waits, the heartbeat and /ready saying what is missing); a worker that stops being
ready stops them, and starts them again when it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
from faststream import BaseMiddleware, FastStream
from faststream.message import StreamMessage
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from fhirschema_bus import logs, tasks, tracing
from fhirschema_bus import metrics as m
from fhirschema_bus import subjects as s
from fhirschema_bus.config import Section
from fhirschema_bus.contracts import Heartbeat
from fhirschema_bus.credentials import nats_security
from fhirschema_bus.dead_letters import send_to_dead_letters
from fhirschema_bus.jetstream_stats import poll as poll_jetstream
from fhirschema_bus.logs import IdleFetchFilter
from fhirschema_bus.nats_permissions import durables_of
from fhirschema_bus.probes import ProbeServer, Readiness
from fhirschema_bus.reload import Reloads
from fhirschema_bus.settings import NatsSettings
from fhirschema_bus.topology import ensure_topology

log = logging.getLogger("fhirschema.worker")


class WorkerSettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_WORKER_")
    section = "worker"

    # /health, /ready, /metrics (probes.py); 0: no endpoint (tests, several workers in one process)
    http_port: int = 0
    http_host: str = "0.0.0.0"
    heartbeat_seconds: float = 10.0
    instance: str = ""  # default: <hostname>-<pid>
    fetch_batch: int = 32  # messages per pull request, handled concurrently
    chunk_fetch: int = 2  # messages per pull for subjects that carry chunks of many items
    # > 1: a pool of handlers fed by the fetch loop (one slow message does not hold back the next
    # pull). 1: each fetched batch is handled concurrently, then the next is pulled — measured
    # faster here (2,000-item batch on 2 replicas: 1.7 s vs 2.1-2.4 s with 32 workers).
    max_workers: int = 1
    # Handlers for chunk subjects. 1: a replica validates one chunk at a time. Once the engine got
    # faster, a second concurrent chunk only added CPU (Synthea batch, 2 replicas: validator CPU per
    # resource 0.20-0.23 ms with 2 vs 0.14-0.16 ms with 1; 4.1-6.3k vs 6.5-8.5k res/s).
    chunk_workers: int = 1
    threads: int = 2  # worker threads for CPU-bound engine calls
    # On SIGTERM: no more pulls, in-flight messages get this long to finish; those still running
    # then are NAK'ed, so another replica takes them at once (not after the ack wait). Keeps a
    # stop under 5 s (Kubernetes' terminationGracePeriodSeconds must be longer).
    drain_seconds: float = 4.0
    stats_seconds: float = 15.0  # consumer lag and dead letters read from JetStream (0: never)

    def instance_id(self) -> str:
        raw = self.instance or f"{socket.gethostname()}-{os.getpid()}"
        return re.sub(r"[^A-Za-z0-9_=-]", "-", raw)  # a valid KV key part


def telemetry() -> list[Any]:
    provider = tracing.provider()
    return [] if provider is None else [tracing.telemetry_middleware(provider)]


class PermanentError(Exception):
    """Retrying cannot help (e.g. a referenced payload that is not JSON): dead-letter at once."""


class Worker:
    def __init__(
        self,
        service: str,
        *,
        version: str = "0.1.0",
        nats: NatsSettings | None = None,
        settings: WorkerSettings | None = None,
    ) -> None:
        self.service = service
        self.version = version
        m.set_build_info(service, version)
        self.nats = nats or NatsSettings()
        self.settings = settings or WorkerSettings()
        self.instance = self.settings.instance_id()
        self.details: Callable[[], dict[str, Any]] = dict  # extra heartbeat detail
        self.state: dict[str, Any] = {}  # what the service's bootstrap wires at start-up
        self.reloads = Reloads()  # what the service applies without a restart (reload.py)
        broker_log = logging.getLogger("fhirschema.broker")
        if not any(isinstance(f, IdleFetchFilter) for f in broker_log.filters):  # once per process
            broker_log.addFilter(IdleFetchFilter())
        self.broker = NatsBroker(
            self.nats.url,
            security=nats_security(self.nats),  # credentials and TLS (credentials.py)
            # Outermost: the consume span (continuing the message's traceparent) is current while
            # our policy acks, retries or dead-letters it.
            middlewares=[*telemetry(), self._middleware],
            log_level=logging.DEBUG,  # per-message "Received/Processed" lines only at debug
            # Ours, not FastStream's own (coloured, on stdout): they go through the root handler.
            logger=broker_log,
            max_reconnect_attempts=-1,
            graceful_timeout=self.settings.drain_seconds,
        )
        self.app = FastStream(
            self.broker,
            logger=logging.getLogger("fhirschema.app"),
            on_startup=[self._on_startup],
            after_startup=[self._started],
            on_shutdown=[self._on_shutdown],
        )
        self._heartbeat: asyncio.Task[None] | None = None
        self._stats: asyncio.Task[None] | None = None
        self._probes: ProbeServer | None = None
        self.readiness = Readiness(False, "starting")
        self._gated: list[Any] = []  # subscribers that pull work only while ready
        self._gate_open = asyncio.Event()
        self._gate_lock = asyncio.Lock()
        self._subscribers_started = False
        self._readiness_set = False
        self._startup_hooks: list[Callable[[], Awaitable[None]]] = []
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []

    # -- wiring ------------------------------------------------------------------------------

    @property
    def connection(self) -> Client:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        return self.broker.config.connection_state.stream

    def on_startup(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run after NATS is connected and the topology exists, before subscribers start."""
        self._startup_hooks.append(hook)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._shutdown_hooks.append(hook)

    def gated(self, subscriber: Any) -> Any:
        """Register a subscriber (as returned by `broker.subscriber(...)`) that takes work only
        while the worker is ready."""
        self._gated.append(subscriber)
        return subscriber

    async def set_readiness(self, readiness: Readiness) -> None:
        """Ready or not: starts or stops the gated subscribers, and beats at once."""
        self._readiness_set = True
        async with self._gate_lock:
            was, self.readiness = self.readiness.ready, readiness
            if readiness.ready:
                self._gate_open.set()
            else:
                self._gate_open.clear()
            if readiness.ready != was and self._subscribers_started:
                for sub in self._gated:
                    await (sub.start() if readiness.ready else sub.stop())
                log.info("%s %s", self.service, "ready: taking work" if readiness.ready else
                         f"not ready, no more work taken: {readiness.reason}")  # fmt: skip
        if self._heartbeat is not None:
            with contextlib.suppress(Exception):
                await self._beat_once()

    def _probe_readiness(self) -> Readiness:
        """/ready: a service that says it is ready during its start-up hooks (storage, once its
        index is loaded) answers 200 only once the broker has subscribed too; before, a request to
        it found no responder."""
        if self.readiness.ready and not self._subscribers_started:
            return Readiness(False, "starting: subscribing to its subjects")
        return self.readiness

    def _middleware(self, msg: Any, context: Any) -> ReliableConsume:
        return ReliableConsume(msg, context=context, worker=self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def _on_startup(self) -> None:
        await self.broker.connect()
        # Before the subscribers start: they must bind to the durables we configure, not create
        # their own with FastStream's defaults.
        await ensure_topology(self.js, self.nats)
        m.failure_series(self.service, durables_of(self.service))
        for hook in self._startup_hooks:
            await hook()
        if self.settings.http_port:
            self._probes = ProbeServer(
                self.settings.http_port, self._probe_readiness, self.settings.http_host
            )
            self._probes.start()
        self._heartbeat = asyncio.create_task(self._beat(), name=f"{self.service}-heartbeat")
        if self.settings.stats_seconds > 0:
            every = self.settings.stats_seconds
            self._stats = asyncio.create_task(poll_jetstream(self.js, every), name=f"{self.service}-stats")
        if self._gated and not self.readiness.ready:
            log.info("%s waits until it is ready: %s", self.service, self.readiness.reason)
            await self._gate_open.wait()  # the broker starts the gated subscribers after this hook

    async def _started(self) -> None:
        async with self._gate_lock:
            self._subscribers_started = True
            if not self.readiness.ready:
                for sub in self._gated:  # readiness was lost while the broker started them
                    await sub.stop()
        if not self._readiness_set:  # the service does not say: started is ready
            await self.set_readiness(Readiness(True))  # beats, which also does what follows
        else:
            # Started means the server knows our subscriptions: whoever awaited app.start() may
            # ask at once. nats-py queues a SUB for its flusher task, and flush() writes its PING
            # straight to the socket, ahead of what is still queued, so a PONG proves nothing (a
            # storage test got "no responders" right after start + flush). The heartbeat is a
            # request through that same queue: answered, everything queued before it was read.
            with contextlib.suppress(Exception):
                await self._beat_once()
        log.info("%s %s started (instance %s)", self.service, self.version, self.instance)
        # What start-up built (loaded packages, schemas, clients) lives as long as the process:
        # out of the collector's reach, full collections no longer walk it while messages are
        # decoded (Synthea batch, validator CPU per resource: 0.158 → 0.128 ms). Garbage first.
        # After ready, not before: a full collection costs a converter about 0.05 s of CPU.
        gc.collect()
        gc.freeze()

    async def _on_shutdown(self) -> None:
        # Re-cancelled until they end: one cancelled in a NATS request may swallow it (tasks.py).
        await tasks.stop(self._heartbeat, self._stats)
        with contextlib.suppress(Exception):  # NATS away: the key expires with the bucket's TTL
            async with asyncio.timeout(1.0):
                kv = await self.js.key_value(s.KV_SERVICES)
                await kv.delete(self.heartbeat_key)
        await self._drain()
        for hook in self._shutdown_hooks:
            await hook()
        if self._probes is not None:
            self._probes.stop()

    async def _drain(self) -> None:
        """Stop pulling and let in-flight messages finish (up to drain_seconds; FastStream then
        cancels them and `ReliableConsume` NAKs them) before the service's own shutdown hooks
        close what the handlers use (FastStream runs those hooks before it stops subscribers)."""
        t0 = time.perf_counter()
        in_flight = sum(
            int(getattr(getattr(sub, "lock", None), "qsize", 0)) for sub in self.broker.subscribers
        )
        async with anyio.create_task_group() as tg:
            for sub in self.broker.subscribers:
                tg.start_soon(sub.stop)
        log.info("%s drained in %.2f s (%d messages were in flight)", self.service,
                 time.perf_counter() - t0, in_flight)  # fmt: skip

    @property
    def heartbeat_key(self) -> str:
        return f"{self.service}.{self.instance}"

    async def _beat(self) -> None:
        while True:
            try:
                await self._beat_once()
            except Exception as e:  # NATS reconnecting: the next beat will do
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def beat(self) -> None:
        """Beat now (something the heartbeat's detail says changed); the next ones as usual."""
        await self._beat_once()

    async def _beat_once(self) -> None:
        """The heartbeat says whether this instance takes work, and if not, what it lacks."""
        detail = {**self.details(), **self.readiness.as_dict()}
        beat = Heartbeat(service=self.service, instance=self.instance, version=self.version, detail=detail)
        kv = await self.js.key_value(s.KV_SERVICES)
        await kv.put(self.heartbeat_key, beat.model_dump_json().encode())

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Start-up and shutdown never overlap: a signal during
        start-up ends the start-up first (FastStream's own run() began its shutdown beside a
        start-up still running, which could then start tasks that nothing stopped)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self.app.start(), name=f"{self.service}-start")
        stopped = asyncio.create_task(stop.wait(), name=f"{self.service}-stop-signal")
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("%s: stop requested during start-up", self.service)
                await tasks.stop(starting, timeout=self.settings.drain_seconds)
            elif starting.exception() is not None:
                with contextlib.suppress(Exception):  # what start-up opened, closed if it can be
                    await self.app.stop()
                starting.result()  # a failed start-up ends the process with its error
            else:
                await stopped
            t0 = time.perf_counter()
            await self.app.stop()
            log.info("%s stopped in %.2f s", self.service, time.perf_counter() - t0)
        finally:
            await tasks.stop(starting, stopped)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    # -- acknowledgement policy ----------------------------------------------------------------

    def backoff(self, deliveries: int) -> float:
        delays = self.nats.retry_delays_seconds or [1.0]
        return delays[min(max(deliveries, 1), len(delays)) - 1]


class ReliableConsume(BaseMiddleware):
    """Ack, retry with backoff, or dead-letter one JetStream message (see module docstring)."""

    def __init__(self, msg: Any, /, *, context: Any, worker: Worker) -> None:
        super().__init__(msg, context=context)
        self.worker = worker

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], stream_msg: StreamMessage[Any]
    ) -> Any:
        raw = stream_msg.raw_message
        with logs.bound(**tracing.incoming_ids(raw.headers)):
            try:
                deliveries = raw.metadata.num_delivered
            except Exception:
                return await call_next(stream_msg)  # core NATS request/reply: FastStream's own handling
            return await self._consume(call_next, stream_msg, deliveries)

    async def _consume(
        self, call_next: Callable[[Any], Awaitable[Any]], stream_msg: StreamMessage[Any], deliveries: int
    ) -> Any:
        raw = stream_msg.raw_message
        msg = cast(NatsMessage, stream_msg)  # a JetStream message: it has metadata
        w, subject = self.worker, raw.subject
        # By durable, not subject: subjects of job events carry the job id (unbounded).
        labels = (w.service, raw.metadata.consumer or subject)
        t0 = time.perf_counter()
        try:
            result = await call_next(msg)
        except asyncio.CancelledError:
            # Shutting down past drain_seconds: give the message back now, for another replica
            # (without, JetStream redelivers it only after ack_wait). Shielded: we are cancelled.
            with anyio.move_on_after(1.0, shield=True), contextlib.suppress(Exception):
                await msg.nack()
            raise
        except (ValidationError, PermanentError) as e:
            await self._dead(msg, f"{type(e).__name__}: {e}", deliveries, labels)
            return None
        except Exception as e:
            m.MESSAGES_FAILED.labels(*labels).inc()
            error = f"{type(e).__name__}: {e}"
            if deliveries >= w.nats.max_deliver:
                await self._dead(msg, error, deliveries, labels)
            else:
                log.warning("%s: delivery %d failed, retrying: %s", subject, deliveries, error)
                await msg.nack(delay=w.backoff(deliveries))
            return None
        await msg.ack()
        m.MESSAGES.observe(labels, time.perf_counter() - t0)
        return result

    async def _dead(self, msg: NatsMessage, error: str, deliveries: int, labels: tuple[str, str]) -> None:
        w = self.worker
        try:
            await send_to_dead_letters(w.js, msg.raw_message, error, w.service, deliveries=deliveries)
        except Exception as e:
            # The dead-letter stream is unreachable: keep the message, it comes back later.
            log.error("dead-lettering failed (%s); message kept for redelivery", e)
            await msg.nack(delay=w.backoff(deliveries))
            return
        m.MESSAGES_DEAD_LETTERED.labels(*labels).inc()
        log.error("%s dead-lettered after %d deliveries: %s", labels[1], deliveries, error)
