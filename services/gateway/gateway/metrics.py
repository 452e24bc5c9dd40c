"""Prometheus metrics (one registry per app); the requests' are fed by gateway.access.RequestObserver.

Every name here and in `fhirschema_bus.metrics` is what the dashboard and alert rules may use
(deploy/; checked by tests/services/test_observability_rules.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from fhirschema_bus.metrics import set_build_info
from gateway import __version__

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "gateway_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=r,
        )
        self.sync_in_flight = Gauge(
            "gateway_sync_validations_in_flight", "POST /validate requests awaiting a result", registry=r
        )
        self.sync_timeouts = Counter(
            "gateway_sync_timeouts", "synchronous requests that timed out (504)", registry=r
        )
        self.batch_items = Counter(
            "gateway_batch_items", "batch items accepted, by kind (validate, convert)", ["kind"], registry=r
        )
        for kind in ("validate", "convert"):
            self.batch_items.labels(kind)
        self.ws_clients = Gauge("gateway_websocket_clients", "open WebSocket connections", registry=r)
        info = Info(
            "fhirschema_build", "What runs: service, version, engine build, Python", ["service"], registry=r
        )
        set_build_info("gateway", __version__, info=info)

    def render(self) -> bytes:
        return generate_latest(self.registry)
