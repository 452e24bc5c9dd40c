"""Logging of every service: one handler on the root logger, JSON or text.

JSON (`FHIRSCHEMA_LOG_FORMAT=json`; the default when stderr is not a terminal, as in a container)
writes one object per line with `time`, `level`, `service`, `logger`, `message`, `trace_id`,
`span_id` (of the current OpenTelemetry span), `request_id` and `job_id` (bound by whoever
handles the request or message, `bound()`), plus the record's extra fields; a traceback is the
`exc_info` string of that same object. Text (`text`; the default on a terminal) is for people.
Neither has colour codes: the handlers uvicorn and FastStream install for themselves (coloured,
on stdout) are removed and their records go through the root handler too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal

from opentelemetry import trace
from pythonjsonlogger.orjson import OrjsonFormatter

Format = Literal["auto", "json", "text"]
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
IDS = ("trace_id", "span_id", "request_id", "job_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Libraries that give their loggers handlers of their own: theirs go, the root's serves them.
OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "faststream.access.nats")


@contextlib.contextmanager
def bound(*, request: str | None = None, job: str | None = None) -> Iterator[None]:
    """Log records inside carry these ids (a None leaves the id as it was)."""
    tokens = []
    if request is not None:
        tokens.append((request_id, request_id.set(request)))
    if job is not None:
        tokens.append((job_id, job_id.set(job)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Puts the service name and the current ids on every record the handler writes."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else None
        record.span_id = f"{ctx.span_id:016x}" if ctx.is_valid else None
        record.request_id = getattr(record, "request_id", None) or request_id.get()
        record.job_id = getattr(record, "job_id", None) or job_id.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with the ids that are set at the end."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{k}={v}" for k in ("request_id", "job_id", "trace_id") if (v := getattr(record, k, None))
        )
        if not ids:
            return line
        first, nl, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{ids}]{nl}{rest}"


class IdleFetchFilter(logging.Filter):
    """For the broker's logger: an idle pull that times out is no error. nats-py's fetch raises
    a bare asyncio.TimeoutError when its deadline passes between its two pull requests, which
    FastStream's pull loop does not catch (it catches nats' TimeoutError): its supervisor logs
    the traceback as an ERROR and restarts the loop, as it should. Those records, and the
    supervisor's "callback for Task-N is being executed" line per restart, are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("callback for ") and msg.endswith(" is being executed..."):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, TimeoutError) and "raised an exception, retrying" in msg)


def json_formatter() -> logging.Formatter:
    # orjson, not the json module: every access line goes through here (about 40% less CPU each).
    return OrjsonFormatter(
        ["levelname", "service", "name", "message", *IDS],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
    )


def resolve(fmt: Format, stream: Any = None) -> Literal["json", "text"]:
    """`auto`: text for a person at a terminal, JSON for everything else (containers, files)."""
    if fmt != "auto":
        return fmt
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def setup(service: str, level: str = "INFO", fmt: Format = "auto") -> None:
    """The root handler on stderr for this process (called once by the entry point)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if resolve(fmt) == "json" else TextFormatter())
    handler.addFilter(ContextFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) as records, not bare stderr lines
    sys.excepthook = _log_uncaught
    for name in OWN_HANDLERS:
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """A crash's traceback in the log's format (one JSON object), not Python's bare text."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("fhirschema").critical("uncaught exception", exc_info=(kind, value, tb))
