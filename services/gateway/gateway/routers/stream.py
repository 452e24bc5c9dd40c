"""WS /validate/stream: resources in, outcomes out as they complete; job status subscriptions.

Client -> server text frames: a FHIR resource (JSON object), or {"subscribe": "<job id>"}
(optionally {"unsubscribe": "<job id>"}). Server -> client: {"index": n, "valid": ..., "outcome":
...} for the n-th resource sent (0-based), {"job": id, "event": JobEvent} for subscriptions and
{"index": n, "error": "..."} / {"error": "..."} for problems.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from nats.js.api import DeliverPolicy

from fhirschema import jsoninput
from fhirschema.jsoninput import JsonInputError, ParsedInput
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobStatus
from gateway import websocket_auth
from gateway.bodies import requested, requested_packages
from gateway.bootstrap import Container
from gateway.errors import GatewayError, InvalidInput, operation_outcome
from gateway.security import accept_websocket
from gateway.service.auth import VALIDATE

router = APIRouter(tags=["validate"])


class Session:
    def __init__(self, ws: WebSocket, c: Container, profiles: list[str], packages: list[str] = []):  # noqa: B006
        self.ws, self.c, self.profiles, self.packages = ws, c, requested(profiles), requested(packages)
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.subs: dict[str, Any] = {}
        self.next_index = 0

    async def send(self, obj: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_text(orjson.dumps(obj).decode())

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handle(self, text: str) -> None:
        try:
            parsed = jsoninput.parse(text)
        except JsonInputError as e:
            # Not numbered: a frame that is not JSON is not known to be a resource.
            await self.send(
                {"error": InvalidInput(e).message, "status": 400, "outcome": e.result().to_outcome()}
            )
            return
        data = parsed.value
        if isinstance(data, dict) and set(data) == {"subscribe"}:
            await self.subscribe(str(data["subscribe"]))
        elif isinstance(data, dict) and set(data) == {"unsubscribe"}:
            await self.unsubscribe(str(data["unsubscribe"]))
        elif isinstance(data, dict):
            index, self.next_index = self.next_index, self.next_index + 1
            self.spawn(self.validate(index, parsed, text.encode()))
        else:
            await self.send({"error": 'expected a JSON object: a resource or {"subscribe": job}'})

    async def validate(self, index: int, parsed: ParsedInput, raw: bytes) -> None:
        resource = parsed.value
        try:
            res = await self.c.validation.validate_one(
                resource, raw, self.profiles, issues=parsed.issues, packages=self.packages
            )
        except GatewayError as e:  # e.g. 503 not ready: no verdict, the outcome says why
            outcome = e.outcome or operation_outcome(e.message, e.status)
            await self.send(
                {"index": index, "error": e.message, "status": e.status, "outcome": outcome, **e.extra}
            )
            return
        await self.send({"index": index, "job": res.job_id, "valid": res.valid, "outcome": res.outcome})

    async def subscribe(self, job_id: str) -> None:
        """The job's current state, then every later event, with no gap: the subscription exists
        before the snapshot is read, and events that arrive meanwhile wait behind the snapshot
        (those it already covers are dropped)."""
        await self.unsubscribe(job_id)  # subscribing again: a fresh snapshot, one stream of events
        early: list[dict[str, Any]] | None = []  # events held until the snapshot is sent
        snapshot: JobStatus | None = None

        async def forward(msg: Any) -> None:
            event = orjson.loads(msg.data)
            if early is not None:
                early.append(event)
            elif snapshot is None or _newer(event, snapshot):
                await self.send({"job": job_id, "event": event})

        try:
            jobs = await self.c.jobs()
            subject = s.job_result_subject(s.JOB_EVENTS, job_id)
            sub = await self.c.bus.js.subscribe(
                subject, cb=forward, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
            )
            snapshot = await jobs.get(job_id)
        except GatewayError as e:
            await self.send({"job": job_id, "error": e.message, "status": e.status})
            return
        if snapshot is None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await self.send({"job": job_id, "error": f"no job {job_id!r}", "status": 404})
            return
        self.subs[job_id] = sub
        await self.send({"job": job_id, "status": orjson.loads(snapshot.model_dump_json())})
        while early:  # events that arrive while these are sent are appended and sent in order
            event = early.pop(0)
            if _newer(event, snapshot):
                await self.send({"job": job_id, "event": event})
        early = None  # no await since the list was seen empty: from now on, callbacks send

    async def unsubscribe(self, job_id: str) -> None:
        sub = self.subs.pop(job_id, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for sub in self.subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


@router.websocket("/validate/stream")
async def validate_stream(ws: WebSocket) -> None:
    c: Container = ws.app.state.container
    try:
        requested_packages(ws.query_params.getlist("package"))
    except GatewayError as e:
        await websocket_auth.refuse(ws, e)
        return
    if await accept_websocket(ws, VALIDATE) is None:
        return
    session = Session(ws, c, ws.query_params.getlist("profile"), ws.query_params.getlist("package"))
    c.metrics.ws_clients.inc()
    try:
        while True:
            await session.handle(await ws.receive_text())
    except WebSocketDisconnect:
        pass
    finally:
        c.metrics.ws_clients.dec()
        await session.close()


def _newer(event: dict[str, Any], snapshot: JobStatus) -> bool:
    """Does a job event say more than the snapshot (more items done, or another state)?"""
    done = event.get("done")
    if not isinstance(done, int) or done > snapshot.done:
        return True
    return done == snapshot.done and event.get("state") != snapshot.state
