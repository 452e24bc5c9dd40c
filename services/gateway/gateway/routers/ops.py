"""GET /health, GET /ready, GET /metrics, GET /info."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from nats.js.errors import NoKeysError
from prometheus_client import CONTENT_TYPE_LATEST

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import Heartbeat
from gateway import __version__
from gateway.deps import ContainerDep
from gateway.errors import GatewayError

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "a dependency is unreachable"}})
async def ready(c: ContainerDep) -> Response:
    """NATS, S3 and Redis reachable -> 200, else 503 naming what failed."""
    checks = {"nats": c.bus.ping(), "s3": c.objects.ping(), "redis": c.ping_redis()}
    results = await asyncio.gather(*checks.values(), return_exceptions=True)
    body: dict[str, Any] = {"status": "ready", "checks": {}}
    for name, res in zip(checks, results, strict=True):
        if isinstance(res, BaseException):
            body["status"] = "unavailable"
            body["checks"][name] = {
                "ok": False,
                "error": res.message if isinstance(res, GatewayError) else str(res),
            }
        else:
            body["checks"][name] = {"ok": True}
    failed = [k for k, v in body["checks"].items() if not v["ok"]]
    if failed:
        body["failed"] = failed
    return Response(orjson.dumps(body), status_code=503 if failed else 200, media_type="application/json")


@router.get("/metrics", response_class=Response)
async def metrics(c: ContainerDep) -> Response:
    """Prometheus text format."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/info")
async def info(c: ContainerDep) -> dict[str, Any]:
    """Version, services seen (heartbeats in KV fhirschema_services), loaded packages if known."""
    services: list[dict[str, Any]] = []
    packages: set[str] = set()
    if c.bus.connected:
        try:
            kv = await c.bus.js.key_value(s.KV_SERVICES)
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        except Exception:
            keys = []
        for key in keys:
            try:
                hb = Heartbeat.model_validate_json((await kv.get(key)).value or b"{}")
            except Exception:
                continue
            services.append(orjson.loads(hb.model_dump_json()))
            pk = hb.detail.get("packages")
            if isinstance(pk, list):
                packages.update(str(p) for p in pk)
    return {
        "name": "fhirschema-gateway",
        "version": __version__,
        "instance": c.instance,
        "nats": c.bus.connected,
        "services": sorted(services, key=lambda h: (h["service"], h["instance"])),
        "packages": sorted(packages),
    }
