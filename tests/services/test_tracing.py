"""Traces: one request is one trace across the gateway (in-process, an in-memory exporter) and
the workers (their own processes, exporting OTLP over HTTP to a receiver here, configured by
OTEL_* variables only); the W3C traceparent travels in the NATS message headers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from fhirschema_bus import logs, tracing
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_JOB_ID, HEADER_REQUEST_ID
from fhirschema_bus.servers import RunningServer, free_port
from tests.services.test_gateway_support import Stack, gateway_stack

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT:016x}-01"


def test_tracing_is_off_unless_the_otel_variables_say_where() -> None:
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    )
    assert not tracing.enabled({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.configure("x", {}) is None


def test_outgoing_headers_carry_the_context_and_ids() -> None:
    assert tracing.outgoing({"Nats-Msg-Id": "m"}) == {"Nats-Msg-Id": "m"}  # no span, no ids
    ctx = SpanContext(TRACE_ID, PARENT, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(ctx)), logs.bound(request="r", job="j"):
        headers = tracing.outgoing({"Nats-Msg-Id": "m"})
    assert headers["traceparent"] == TRACEPARENT
    assert (headers[HEADER_REQUEST_ID], headers[HEADER_JOB_ID], headers["Nats-Msg-Id"]) == ("r", "j", "m")
    assert tracing.incoming_ids(headers) == {"request": "r", "job": "j"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver:
    """An OTLP/HTTP traces endpoint (protobuf), as a collector would be."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.take(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, req: ExportTraceServiceRequest) -> None:
        for rs in req.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    self.spans.append(Span(
                        attrs.get("service.name", ""), sp.name, sp.trace_id.hex(),
                        sp.span_id.hex(), sp.parent_span_id.hex(),
                    ))  # fmt: skip

    def of_trace(self, trace_id: str) -> list[Span]:
        return [sp for sp in self.spans if sp.trace_id == trace_id]


@dataclass
class Traced:
    stack: Stack
    receiver: Receiver
    memory: InMemorySpanExporter  # the gateway's spans


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
async def traced(
    nats_server: RunningServer,
    s3_server: RunningServer,
    redis_server: RunningServer,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Traced]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    previous = tracing.use(provider)  # the in-process gateway's instrumentation
    try:
        with pytest.MonkeyPatch.context() as mp:  # what the worker processes start with
            mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
            mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: spans exported at once
            stack = gateway_stack(nats_server, s3_server, redis_server, tmp_path_factory.mktemp("traced"))
            st = await stack.__aenter__()
        try:
            yield Traced(st, receiver, memory)
        finally:
            await stack.__aexit__(None, None, None)
    finally:
        tracing.use(previous)


async def spans_of(traced: Traced, trace_id: str, services: set[str], timeout: float = 20.0) -> list[Span]:
    deadline = asyncio.get_running_loop().time() + timeout
    while {sp.service for sp in traced.receiver.of_trace(trace_id)} < services:
        assert asyncio.get_running_loop().time() < deadline, (services, traced.receiver.spans[-20:])
        await asyncio.sleep(0.1)
    return traced.receiver.of_trace(trace_id)


async def test_a_validation_continues_the_callers_trace_into_the_validator(traced: Traced) -> None:
    async with traced.stack.client() as c:
        r = await c.post("/validate", json={"resourceType": "Patient"}, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    trace_id = f"{TRACE_ID:032x}"
    gateway = [sp for sp in traced.memory.get_finished_spans() if sp.context.trace_id == TRACE_ID]
    server = next(sp for sp in gateway if sp.kind is trace.SpanKind.SERVER)
    assert server.parent is not None and server.parent.span_id == PARENT  # continued, not new
    spans = await spans_of(traced, trace_id, {"validator"})
    consume = next(
        sp for sp in spans if sp.service == "validator" and sp.name == f"{s.DURABLE_VALIDATOR_ONE} process"
    )
    # The validator's span hangs below one of the gateway's (the message carried its context).
    assert int(consume.parent_id, 16) in {sp.context.span_id for sp in gateway}


async def test_a_batch_is_one_trace_from_the_gateway_through_the_validator_to_storage(traced: Traced) -> None:
    async with traced.stack.client() as c:
        r = await c.post(
            "/validate/batch", json=[{"resourceType": "Patient"}, {"resourceType": "Observation"}]
        )
        assert r.status_code == 202, r.text
        for _ in range(200):
            if (await c.get(r.headers["location"])).json()["state"] == "succeeded":
                break
            await asyncio.sleep(0.1)
    server = next(
        sp for sp in traced.memory.get_finished_spans()
        if sp.kind is trace.SpanKind.SERVER and sp.attributes and sp.attributes.get("http.route") == "/validate/batch"
    )  # fmt: skip
    assert server.parent is None  # no traceparent came: the gateway began the trace
    trace_id = f"{server.context.trace_id:032x}"
    spans = await spans_of(traced, trace_id, {"validator", "storage"})
    names = {(sp.service, sp.name) for sp in spans}
    assert ("validator", f"{s.DURABLE_VALIDATOR_BATCH} process") in names, names
    assert any(service == "storage" for service, _ in names), names
