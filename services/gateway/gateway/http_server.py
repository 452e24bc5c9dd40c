"""The gateway's HTTP server: uvicorn, with a bound on a request's header section.

uvicorn's httptools protocol reads a header section of any size (measured: a 10 MB header was
answered 200), so one connection could make the gateway buffer without limit. Here a request
whose start line and headers pass `max_header_bytes` is answered 431 with an OperationOutcome and
its connection closed, as soon as the bytes read pass it (a read holds at most 256 kB). Without httptools,
uvicorn's h11 protocol gets the same bound (it answers 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import orjson
import uvicorn

from gateway.errors import operation_outcome

DRAIN_SECONDS = 1.0  # a refused connection is closed this long after its answer


def _outcome_431(limit: int) -> bytes:
    body = orjson.dumps(operation_outcome(f"the request's headers are larger than {limit} bytes", 431))
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/fhir+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _bounded_httptools(limit: int) -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    refusal = _outcome_431(limit)

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = True  # the bytes coming are a start line and headers
        _head_bytes = 0
        _tail = b""  # the last bytes seen in the head: its end may span two reads

        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # dropped unread: nothing is held
            if self._in_head:
                window = self._tail + data
                end = window.find(b"\r\n\r\n")
                used = len(data) if end < 0 else max(0, end + 4 - len(self._tail))  # the head's part
                self._head_bytes += used
                self._tail = window[-3:]
                if self._head_bytes > limit:
                    self._refuse()
                    return
            super().data_received(data)

        def _refuse(self) -> None:
            # Half-close after the answer and drop what still comes for a moment: closing at once
            # with the client still sending resets the connection, and the reset can lose the 431.
            self._refused = True
            self.transport.write(refusal)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.transport.close)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes, self._tail = True, 0, b""  # keep-alive: the next head

    return BoundedHttpToolsProtocol


def server_config(app: Any, host: str, port: int, max_header_bytes: int, **kw: Any) -> uvicorn.Config:
    """uvicorn's configuration for the gateway: headers bounded whichever HTTP protocol runs."""
    http: Any = _bounded_httptools(max_header_bytes) if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Config(
        app, host=host, port=port, http=http, h11_max_incomplete_event_size=max_header_bytes, **kw
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's Server, exiting 0 after a graceful stop. uvicorn re-raises the SIGTERM/SIGINT it
    handled once its shutdown has ended, so a gateway that had drained cleanly died of the signal
    (exit -15, which a supervisor reads as a crash). A forced stop (a second Ctrl-C) still
    re-raises: that one did not drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            if not self.force_exit:
                self._captured_signals.clear()
