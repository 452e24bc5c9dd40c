"""OpenTelemetry traces across the services, configured only by the standard `OTEL_*` variables.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_TRACES_EXPORTER` (`otlp`, `console`; `none` is off) is set, and never with
`OTEL_SDK_DISABLED=true`. The OTLP exporter is HTTP/protobuf, or gRPC with
`OTEL_EXPORTER_OTLP_PROTOCOL=grpc` when the extra `otlp-grpc` is installed; it reads its own
variables (endpoint, headers, timeout, compression); the sampler is `OTEL_TRACES_SAMPLER`; the resource is
`OTEL_SERVICE_NAME` (default: the service's name) and `OTEL_RESOURCE_ATTRIBUTES`.

Propagation: every NATS publish and request carries the current context as W3C `traceparent`
(and the request and job ids for the logs) in its headers (`outgoing`); a worker's consume span
continues it (FastStream's telemetry middleware, `telemetry_middleware`), and the gateway's
server span continues an incoming HTTP `traceparent` (FastAPI's instrumentation).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace

from fhirschema_bus import logs
from fhirschema_bus.contracts import HEADER_JOB_ID, HEADER_REQUEST_ID

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (start-up time)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("fhirschema.tracing")
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_provider: TracerProvider | None = None


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if (exporters := env.get("OTEL_TRACES_EXPORTER")) is not None:
        return any(e.strip().lower() not in ("", "none") for e in exporters.split(","))
    return any(env.get(name) for name in ENDPOINTS)


def configure(service: str, env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """This process's tracer provider from the environment (the entry point calls it once), or
    None when tracing is off."""
    if not enabled(env):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in (e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")):
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(otlp_exporter(env)))
        elif name == "console":  # one JSON object per line, as the logs
            console = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
            provider.add_span_processor(SimpleSpanProcessor(console))
        elif name not in ("", "none"):
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none)", name)
    trace.set_tracer_provider(provider)  # also for libraries that use the global one
    use(provider)
    return provider


def otlp_protocol(env: Mapping[str, str] = os.environ) -> str:
    """The OTLP protocol for traces, as the SDK reads it (the traces variable first)."""
    raw = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return (raw or "http/protobuf").strip().lower()


def otlp_exporter(env: Mapping[str, str] = os.environ) -> SpanExporter:
    """The OTLP span exporter for the protocol asked for. `grpc` needs the optional gRPC exporter
    (the extra `otlp-grpc`: grpcio is ~18 MB, so the images carry HTTP only); without it, or for
    a protocol the Python SDK lacks (http/json), traces go as http/protobuf, said loudly. Each
    exporter reads its own OTEL_EXPORTER_OTLP_* variables (endpoint, headers, TLS, timeout)."""
    protocol = otlp_protocol(env)
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
        except ImportError:
            log.error(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc, but the gRPC exporter is not installed "
                "(pip install 'fhirschema-service[otlp-grpc]'): traces are sent as http/protobuf"
            )
        else:
            return Grpc()
    elif protocol != "http/protobuf":
        log.warning(
            "OTLP protocol %s is not supported (grpc, http/protobuf): traces go as http/protobuf", protocol
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()


def use(provider: TracerProvider | None) -> TracerProvider | None:
    """Set the provider the services build their instrumentation with (tests: an in-memory
    exporter's); returns the previous one."""
    global _provider
    previous, _provider = _provider, provider
    return previous


def provider() -> TracerProvider | None:
    return _provider


def outgoing(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers of a NATS message: the caller's plus the current trace context and ids."""
    out = dict(headers or {})
    if trace.get_current_span().get_span_context().is_valid:  # else nothing to inject: cheaper
        propagate.inject(out)
    if (rid := logs.request_id.get()) is not None:
        out.setdefault(HEADER_REQUEST_ID, rid)
    if (job := logs.job_id.get()) is not None:
        out.setdefault(HEADER_JOB_ID, job)
    return out


def incoming_ids(headers: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The request and job ids a message carries, for `logs.bound(**...)`."""
    headers = headers or {}
    return {"request": headers.get(HEADER_REQUEST_ID), "job": headers.get(HEADER_JOB_ID)}


def telemetry_middleware(provider: TracerProvider) -> Any:
    """FastStream's NATS telemetry middleware, its spans named by the durable consumer (a job's
    subjects carry the job id: span names must stay few) — or the subject of a core request."""
    from faststream.nats.opentelemetry import provider as nats_provider
    from faststream.opentelemetry.middleware import TelemetryMiddleware

    class ByDurable(nats_provider.NatsTelemetrySettingsProvider):
        def get_consume_destination_name(self, msg: Any) -> str:
            raw = msg.raw_message
            try:
                return str(raw.metadata.consumer or raw.subject)
            except Exception:  # core NATS (request/reply): its subject is fixed
                return str(raw.subject)

    def factory(msg: Any) -> Any:
        found = nats_provider.telemetry_attributes_provider_factory(msg)
        return ByDurable() if isinstance(found, nats_provider.NatsTelemetrySettingsProvider) else found

    return TelemetryMiddleware(settings_provider_factory=factory, tracer_provider=provider)
