"""OTLP export by protocol: `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` (the default) and `grpc`
each reach a collector stub here — the HTTP receiver of test_tracing.py and a gRPC receiver built
from opentelemetry-proto's generated servicer — in-process and from a worker process (the
converter) that continues a traceparent carried in a NATS message's headers."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import nats
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from fhirschema_bus import subjects as s
from fhirschema_bus import tracing
from fhirschema_bus.contracts import ConvertRequest
from fhirschema_bus.processes import stop_process
from fhirschema_bus.servers import RunningServer, free_port
from fhirschema_bus.topology import ensure_topology
from tests.services.test_gateway import sd_from_core
from tests.services.test_lifecycle import env_for, wait_ready
from tests.services.test_tracing import TRACE_ID, TRACEPARENT, Receiver


class GrpcReceiver(Receiver):
    """An OTLP/gRPC traces endpoint: the collector's TraceService, as opentelemetry-proto
    generates it."""

    def __init__(self) -> None:
        self.spans = []
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # the proto's name
                receiver.take(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.grpc)
        port = self.grpc.add_insecure_port(f"127.0.0.1:{free_port()}")
        self.grpc.start()
        self.url = f"http://127.0.0.1:{port}"  # http://: an insecure channel (the SDK's rule)


@pytest.fixture
def http_receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    r = GrpcReceiver()
    yield r
    r.grpc.stop(grace=None)


def test_the_protocol_picks_the_exporter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert tracing.otlp_protocol({}) == "http/protobuf"
    assert tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert tracing.otlp_protocol(both) == "http/protobuf"  # the traces variable wins, as in the SDK
    assert isinstance(tracing.otlp_exporter({}), HttpExporter)
    assert isinstance(tracing.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), GrpcExporter)
    with caplog.at_level(logging.WARNING, "fhirschema.tracing"):
        assert isinstance(tracing.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}), HttpExporter)
    assert "http/json is not supported" in caplog.text
    # Without the gRPC exporter installed (the images): said loudly, and HTTP is used.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    caplog.clear()
    with caplog.at_level(logging.ERROR, "fhirschema.tracing"):
        assert isinstance(tracing.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), HttpExporter)
    assert "otlp-grpc" in caplog.text


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_each_protocol_reaches_its_collector(
    protocol: str, http_receiver: Receiver, grpc_receiver: GrpcReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)  # the exporters read os.environ
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "probe"}))
    provider.add_span_processor(SimpleSpanProcessor(tracing.otlp_exporter()))
    with provider.get_tracer("t").start_as_current_span(f"over {protocol}") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
    provider.shutdown()
    assert [(sp.service, sp.name) for sp in receiver.of_trace(trace_id)] == [("probe", f"over {protocol}")]
    other = http_receiver if receiver is grpc_receiver else grpc_receiver
    assert not other.spans


async def test_a_worker_exports_over_grpc(
    nats_server: RunningServer, grpc_receiver: GrpcReceiver, tmp_path: Any
) -> None:
    """The converter as its own process, told only by OTEL_* variables to export over gRPC: its
    consume span of a message carrying a traceparent reaches the gRPC receiver, in that trace."""
    port = free_port()
    env = env_for(
        nats_server, FHIRSCHEMA_S3_ACCESS_KEY="k", FHIRSCHEMA_S3_SECRET_KEY="s",
        FHIRSCHEMA_WORKER_HTTP_PORT=str(port), FHIRSCHEMA_LOG_FORMAT="json",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
    )  # fmt: skip
    log = tmp_path / "converter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "converter_service"], env=env, stdout=out, stderr=out)
    nc = await nats.connect(nats_server.url)
    try:
        await wait_ready(port, proc)
        js = nc.jetstream()
        await ensure_topology(js)
        job = uuid.uuid4().hex
        request = ConvertRequest(job_id=job, structure_definition=sd_from_core("bodyweight"))
        await js.publish(
            s.CONVERT_ONE, request.model_dump_json().encode(), headers={"traceparent": TRACEPARENT}
        )
        deadline = time.monotonic() + 30
        while not (spans := grpc_receiver.of_trace(f"{TRACE_ID:032x}")):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        assert {sp.service for sp in spans} == {"converter"}
        assert f"{s.DURABLE_CONVERTER} process" in {sp.name for sp in spans}
    finally:
        await nc.close()
        stop_process(proc)
    assert "http/protobuf" not in log.read_text()  # no fallback was needed
