"""GET /health, GET /ready, GET /metrics, GET /info."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.bootstrap import Container
from gateway.deps import ContainerDep
from gateway.errors import GatewayError
from gateway.security import require

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "not ready: the body says what is missing"}})
async def ready(c: ContainerDep) -> Response:
    """200 when NATS, S3 and Redis are reachable and a validator replica holds the configured
    packages (FHIRSCHEMA_PACKAGES) — a verdict can be given; else 503 naming what failed or is
    missing (`missing`: the packages; `checks.validators.ingest_failures`: package -> why its
    ingest failed)."""
    checks = {"nats": c.bus.ping(), "s3": c.objects.ping(), "redis": c.ping_redis()}
    results = await asyncio.gather(*checks.values(), return_exceptions=True)
    body: dict[str, Any] = {"status": "ready", "checks": {}}
    for name, res in zip(checks, results, strict=True):
        if isinstance(res, BaseException):
            body["checks"][name] = {"ok": False, "error": _error(res)}
        else:
            body["checks"][name] = {"ok": True}
    body["checks"]["validators"] = await _validators(c)
    failed = [k for k, v in body["checks"].items() if not v["ok"]]
    if failed:
        body["status"] = "unavailable"
        body["failed"] = failed
        body["missing"] = body["checks"]["validators"].get("missing", [])
    return Response(orjson.dumps(body), status_code=503 if failed else 200, media_type="application/json")


def _error(e: BaseException) -> str:
    return e.message if isinstance(e, GatewayError) else f"{type(e).__name__}: {e}"


async def _validators(c: Container) -> dict[str, Any]:
    if not c.bus.connected:
        return {"ok": False, "error": "NATS is unavailable", "missing": c.readiness.required}
    try:
        a = await c.readiness.current(fresh=True)
    except Exception as e:
        return {"ok": False, "error": _error(e), "missing": c.readiness.required}
    check: dict[str, Any] = {"ok": a.ready, "replicas": a.replicas, "packages": c.readiness.required}
    if not a.ready:
        check.update(error=a.reason, missing=a.missing)
        if a.ingest_failures:  # what `make up` prints: /ready is open, /info needs a credential
            check["ingest_failures"] = a.ingest_failures
    return check


@router.get("/metrics", response_class=Response)
async def metrics(c: ContainerDep) -> Response:
    """Prometheus text format."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/info", dependencies=[require()])
async def info(c: ContainerDep) -> dict[str, Any]:
    """Version, services seen (heartbeats in KV fhirschema_services), the packages the validators
    hold, the configured packages and whether they can be used (`readiness`)."""
    services: list[dict[str, Any]] = []
    packages: set[str] = set()
    readiness: dict[str, Any] = {"ready": False, "reason": "NATS is unavailable"}
    if c.bus.connected:
        with contextlib.suppress(Exception):
            for hb in await c.readiness.source.heartbeats():
                services.append(orjson.loads(hb.model_dump_json()))
                pk = hb.detail.get("packages")
                if hb.service == "validator" and isinstance(pk, list):
                    packages.update(str(p) for p in pk)
        try:
            readiness = (await c.readiness.current(fresh=True)).as_dict()
        except Exception as e:
            readiness = {"ready": False, "reason": _error(e)}
    return {
        "name": "fhirschema-gateway",
        "version": __version__,
        "instance": c.instance,
        "nats": c.bus.connected,
        "services": sorted(services, key=lambda h: (h["service"], h["instance"])),
        "packages": sorted(packages),
        "configured_packages": c.readiness.required,
        "readiness": readiness,
    }
