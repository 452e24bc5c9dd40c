"""What every request leaves behind, in one pure-ASGI layer: the access log line with its
request id, the request metrics, and the RateLimit-* headers of the request's rate-limit check.

The request id is the caller's `X-Request-ID` when it is a sane token, else a new one; it is
bound for everything logged while the request is handled (logs.bound) and returned in the
response's `X-Request-ID`. The route is the template (`/schemas/{schema_id}`), as in the metrics.

One layer, not three: each ASGI layer costs a coroutine call per request and a `send` wrapper
call per message (two per response), and this path runs for every request, /health included.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirschema_bus import logs
from fhirschema_bus.metrics import CountedTimer
from gateway.metrics import Metrics

log = logging.getLogger("gateway.access")
HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER and _SANE.fullmatch(value):
            return value.decode()
    return os.urandom(16).hex()  # as uuid4().hex, at a tenth of its cost (per request)


def rate_limit_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The RateLimit-* headers the request's check left in its state (security.check)."""
    extra = scope.get("state", {}).get("rate_limit")
    return [(k.lower().encode(), v.encode()) for k, v in extra.items()] if extra else []


class RequestObserver:
    """Access log, metrics (HTTP only) and rate-limit headers (HTTP only) of every request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.requests = CountedTimer(metrics.requests, metrics.latency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        http = kind == "http"
        rid = request_id_of(scope)
        start = time.perf_counter()
        status = 500 if http else 403  # a WebSocket closed before accept

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    *rate_limit_headers(scope),
                    (HEADER, rid.encode()),
                ]
            elif kind == "websocket.accept":
                status = 101
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        with logs.bound(request=rid):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                seconds = time.perf_counter() - start
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope.get("method", "WS")
                if http:
                    self.requests.observe((method, route, str(status)), seconds)
                if log.isEnabledFor(logging.INFO):
                    ms = seconds * 1000
                    extra = {"method": method, "route": route, "status": status, "duration_ms": round(ms, 2)}
                    # The record made and handled directly: Logger.info would also walk the stack
                    # for the caller's file and line, which neither log format writes.
                    log.handle(log.makeRecord(
                        log.name, logging.INFO, __file__, 0, "%s %s %d %.1f ms", (method, route, status, ms),
                        None, "RequestObserver", extra,
                    ))  # fmt: skip
