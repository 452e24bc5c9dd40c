"""Logs: with FHIRSCHEMA_LOG_FORMAT=json every line a service writes is one JSON object with the
ids; the gateway writes an access line per request; no colour codes; an idle worker logs no
traceback."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from fhirschema_bus import logs
from fhirschema_bus.processes import stop_process
from fhirschema_bus.servers import RunningServer, free_port
from tests.services.test_gateway import sd_from_core
from tests.services.test_lifecycle import env_for, wait_ready

KEYS = {"time", "level", "service", "message", "trace_id", "span_id", "request_id", "job_id"}


def record(fmt: logging.Formatter, msg: str = "hello", **extra: Any) -> str:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(fmt)
    handler.addFilter(logs.ContextFilter("test"))
    rec = logging.LogRecord("t", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    handler.handle(rec)
    stream = handler.stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def test_json_lines_carry_the_ids_of_the_context() -> None:
    ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(ctx)), logs.bound(request="r-1", job="j-1"):
        line = record(logs.json_formatter())
    obj = orjson.loads(line)
    assert set(obj) >= KEYS
    assert obj["level"] == "WARNING" and obj["service"] == "test" and obj["message"] == "hello"
    assert obj["trace_id"] == f"{0xABC:032x}" and obj["span_id"] == f"{0xDEF:016x}"
    assert (obj["request_id"], obj["job_id"]) == ("r-1", "j-1")
    assert logs.request_id.get() is None  # unbound after the block
    plain = orjson.loads(record(logs.json_formatter()))
    assert plain["trace_id"] is None and plain["request_id"] is None


def test_a_json_line_holds_its_fields_in_order_and_the_records_extras() -> None:
    """The ids first, in a fixed order; a record's extra fields after them, private ones not."""

    def line(**extra: Any) -> str:
        rec = logging.LogRecord("t", logging.INFO, __file__, 7, "%s %d", ("GET", 200), None)
        rec.__dict__.update(extra)
        handler = logging.StreamHandler(io.StringIO())
        handler.setFormatter(logs.json_formatter())
        handler.addFilter(logs.ContextFilter("test"))
        handler.handle(rec)
        assert isinstance(handler.stream, io.StringIO)
        return handler.stream.getvalue()

    with logs.bound(request="r-3", job="j-3"):
        got = line(method="GET", route="/health", status=200, duration_ms=0.12, _private=1)
    assert list(orjson.loads(got))[:8] == [
        "level", "service", "logger", "message", "trace_id", "span_id", "request_id", "job_id"
    ]  # fmt: skip
    assert orjson.loads(got)["route"] == "/health" and "_private" not in orjson.loads(got)
    try:
        raise ValueError("boom")
    except ValueError:
        got = line(exc_info=sys.exc_info())
    assert "ValueError: boom" in got


def test_a_traceback_stays_inside_its_json_object() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = record(logs.json_formatter(), exc_info=sys.exc_info())
    assert line.count("\n") == 1  # one line
    assert "ValueError: boom" in orjson.loads(line)["exc_info"]


def test_text_on_a_terminal_json_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve("auto", Tty()) == "text"
    assert logs.resolve("auto", io.StringIO()) == "json"
    assert logs.resolve("text", io.StringIO()) == "text"
    with logs.bound(request="r-2"):
        line = record(logs.TextFormatter())
    assert line.rstrip().endswith("[request_id=r-2]") and "\x1b" not in line


async def wait_health(c: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            if (await c.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("no /health")


def read_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert "\x1b[" not in text, "colour codes in the log"
    parsed = []
    for line in text.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise AssertionError(f"{path.name}: not JSON: {line!r}") from e
        assert isinstance(obj, dict) and set(obj) >= KEYS, f"{path.name}: keys missing in {line!r}"
        parsed.append(obj)
    return parsed


async def test_every_line_of_a_worker_and_the_gateway_is_json(
    nats_server: RunningServer, tmp_path: Path
) -> None:
    worker_port, gw_port = free_port(), free_port()
    env = env_for(
        nats_server, FHIRSCHEMA_LOG_FORMAT="json", FHIRSCHEMA_S3_ACCESS_KEY="k", FHIRSCHEMA_S3_SECRET_KEY="s",
        FHIRSCHEMA_GATEWAY_PORT=str(gw_port), FHIRSCHEMA_WORKER_HTTP_PORT=str(worker_port),
        FHIRSCHEMA_WORKER_STATS_SECONDS="1",
        FHIRSCHEMA_AUTH="off",  # (auth has its own tests)
    )  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outputs: dict[str, tuple[Path, Path]] = {}
    for name, module in (("converter", "converter_service"), ("gateway", "gateway")):
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        outputs[name] = (out, err)
        with out.open("wb") as o, err.open("wb") as e:
            procs[name] = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=o, stderr=e)
    try:
        await wait_ready(worker_port, procs["converter"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", timeout=30) as c:
            await wait_health(c, procs["gateway"])  # /ready wants validators: none here
            r = await c.post("/convert/structuredefinition", json=sd_from_core("bodyweight"),
                             headers={"X-Request-ID": "req-42"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == "req-42"
            assert (await c.get("/schemas/nope%2E")).status_code in (404, 503)
            generated = (await c.get("/health")).headers["x-request-id"]
        # Idle longer than a pull's fetch timeout and a few stats polls: no traceback for that.
        await asyncio.sleep(6)
    finally:
        for proc in procs.values():
            stop_process(proc)
    lines = {name: read_lines(out) + read_lines(err) for name, (out, err) in outputs.items()}
    for name, objs in lines.items():
        assert objs, f"{name} wrote nothing"
        assert {o["service"] for o in objs} == {name}
        assert not [o for o in objs if o.get("exc_info")], f"{name} logged a traceback: {objs}"
    access = [o for o in lines["gateway"] if o["logger"] == "gateway.access"]
    convert = next(o for o in access if o["route"] == "/convert/structuredefinition")
    assert (convert["method"], convert["status"], convert["request_id"]) == ("POST", 200, "req-42")
    assert convert["duration_ms"] > 0
    assert any(o["route"] == "/schemas/{schema_id:path}" for o in access)  # the template, not the path
    assert any(o["route"] == "/health" and o["request_id"] == generated for o in access)
    assert any("started" in o["message"] for o in lines["converter"])
