"""The access log: one line per HTTP request or WebSocket connection, with its request id.

The request id is the caller's `X-Request-ID` when it is a sane token, else a new one; it is
bound for everything logged while the request is handled (logs.bound) and returned in the
response's `X-Request-ID`. The route is the template (`/schemas/{schema_id}`), as in the metrics.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirschema_bus import logs

log = logging.getLogger("gateway.access")
HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER and _SANE.fullmatch(value):
            return value.decode()
    return os.urandom(16).hex()  # as uuid4().hex, at a tenth of its cost (per request)


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        start = time.perf_counter()
        status = 500 if scope["type"] == "http" else 403  # a WebSocket closed before accept

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            elif kind == "websocket.accept":
                status = 101
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        with logs.bound(request=rid):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope.get("method", "WS")
                ms = (time.perf_counter() - start) * 1000
                log.info(
                    "%s %s %d %.1f ms", method, route, status, ms,
                    extra={"method": method, "route": route, "status": status, "duration_ms": round(ms, 2)},
                )  # fmt: skip
