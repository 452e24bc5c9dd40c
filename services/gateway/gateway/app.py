"""The FastAPI app factory: `create_app()` (uvicorn --factory gateway.app:create_app)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from fhirschema_bus import tracing
from gateway import __version__
from gateway.access import RequestObserver
from gateway.bootstrap import Container, Settings, bootstrap
from gateway.cors import ReloadableCors
from gateway.errors import install_error_handlers
from gateway.routers import convert, dead_letters, fhir, ig, jobs, ops, schemas, stream, validate

DESCRIPTION = """HTTP front of the FHIRSchema services. Every request travels over NATS JetStream
to independent validator, converter and storage services; programs may also publish straight to
NATS (see the AsyncAPI document)."""


# FastAPI's own OpenTelemetry (0.16x) asks the global providers on every request whether they are
# configured (3% of a POST /validate's gateway CPU with tracing off, py-spy). Ours is set apart:
# traces by FastAPIInstrumentor when OTEL_* say so, metrics by Prometheus, logs by logs.py.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    container = container or bootstrap(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await container.start()
        try:
            yield
        finally:
            await container.stop()

    # /docs and /redoc with their assets served by the gateway itself: they work offline.
    app = FastAPIOffline(
        title="FHIRSchema gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        **_NO_NATIVE_TELEMETRY,
    )

    @app.get("/openapi", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The OpenAPI document (also at /openapi.json)."""
        return JSONResponse(app.openapi())

    app.state.container = container
    install_error_handlers(app)
    # Routes are matched in order, each costing a match attempt: the hot POST /validate and the
    # probes (GET /health, /ready, /metrics: called every few seconds by every orchestrator) first.
    app.include_router(validate.hot)
    for r in (ops, validate, fhir, stream, convert, schemas, jobs, dead_letters, ig):
        app.include_router(r.router)
    # Access log, metrics and rate-limit headers; its request id is bound for all that runs inside.
    app.add_middleware(RequestObserver, metrics=container.metrics)
    app.add_middleware(ReloadableCors, policy=container.cors)  # outermost: preflights before anything
    if (provider := tracing.provider()) is not None:  # OTEL_* configured (tracing.configure)
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # A server span per request, continuing the caller's traceparent; probes are not traced.
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="health,ready,metrics"
        )
    return app
