"""Prometheus metrics (one registry per app) and a lean ASGI middleware that feeds them.

Every name here and in `fhirschema_bus.metrics` is what the dashboard and alert rules may use
(deploy/; checked by tests/services/test_observability_rules.py)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class MetricsMiddleware:
    """Counts and times HTTP requests by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        # (method, route, status) -> the counter's and histogram's children: labels() costs
        # more than the inc and observe it serves (a lock, a tuple check, str()s). Bounded as
        # the metric's own label sets are (route templates, not paths).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            key = (scope["method"], path, status)
            if (children := self._children.get(key)) is None:
                labels = (key[0], path, str(status))
                children = self._children[key] = (
                    self.metrics.requests.labels(*labels),
                    self.metrics.latency.labels(*labels),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
