"""The gateway's own CPU per request, in process: its ASGI app (every middleware, routing, the
route's checks and encoding, the access log line) called directly for GET /health and
POST /validate, without sockets, uvicorn or NATS — the reply from the validator is a canned one.

A steadier figure than bench/gateway_bench.py's on a loaded machine (no other process in the
measured path; CPU time of this process only), for before/after comparisons of the request path.
It does not replace gateway_bench: the HTTP server, the NATS client and the syscalls are not here.

    .venv/bin/python bench/gateway_app_bench.py [--requests 20000] [--rounds 5] [--json]

Auth off, no rate limit, no CORS origins (the defaults of the other benchmarks); the access log
is written as JSON lines to a temporary file, as a deployed gateway writes it to its stderr.
Another tree's gateway is measured by putting its sources first (before/after a change):

    PYTHONPATH=../other/shared:../other/services/gateway .venv/bin/python bench/gateway_app_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from fhirschema_bus.settings import S3Settings

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
sys.path.append(str(REPO / "services" / "gateway"))  # after PYTHONPATH: another tree may be measured

from gateway.app import create_app  # noqa: E402
from gateway.bootstrap import Settings, bootstrap  # noqa: E402

PATIENT = SHARED / "fhir" / "examples" / "r4-spec" / "Patient-example.json"
REPLY = orjson.dumps({
    "job_id": "bench", "index": 0, "valid": True,
    "outcome": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "All OK"}]},
})  # fmt: skip


def gateway_app() -> Any:
    """The app with auth off and a ready stack. Written to run on older trees too (PYTHONPATH
    of 346eb41, which had neither auth nor a readiness gate), so that before and after compare."""
    extra: dict[str, Any] = {}
    if "auth" in {f.name for f in dataclasses.fields(Settings)}:
        from fhirschema_bus.settings import AuthSettings

        extra["auth"] = AuthSettings(auth="off")
    container = bootstrap(Settings(s3=S3Settings(access_key="bench", secret_key="bench"), **extra))
    if getattr(container, "readiness", None) is not None:  # nothing connects: no lifespan run
        from gateway.service.readiness import Assessment

        container.readiness._last = Assessment(ready=True)  # a ready stack, never re-read here
        container.readiness._at = float("inf")

    async def call(subject: str, job_id: str, message: bytes, timeout: float) -> bytes:
        return REPLY  # what the validator would answer, without NATS

    container.validation.d.call = call
    app = create_app(container=container)
    gc.collect()
    gc.freeze()  # as the gateway's start-up does (Container.start): its state out of collections
    return app


def log_setup() -> None:
    """The tree's own logging of a service (JSON lines), or, on a tree without it, a root
    handler at INFO (that gateway wrote no line per request)."""
    try:
        from fhirschema_bus import logs
    except ImportError:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        return
    logs.setup("gateway", "INFO", "json")


def scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {},
    }  # fmt: skip


async def measure(app: Any, requests: int, rounds: int) -> dict[str, Any]:
    body = PATIENT.read_bytes()
    host = [(b"host", b"127.0.0.1:8080")]
    posted = [
        *host,
        (b"content-type", b"application/fhir+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    cases = {"health": ("GET", "/health", host, b""), "validate": ("POST", "/validate", posted, body)}

    async def one(method: str, path: str, headers: list[tuple[bytes, bytes]], data: bytes) -> int:
        pending = [{"type": "http.request", "body": data, "more_body": False}]
        status = 0

        async def receive() -> dict[str, Any]:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope(method, path, headers), receive, send)
        return status

    report: dict[str, Any] = {"resource_bytes": len(body), "requests_per_round": requests // rounds}
    for name, case in cases.items():
        for _ in range(500):  # warm: routes, caches, metric children
            if (status := await one(*case)) != 200:
                raise SystemExit(f"{name}: HTTP {status}")
        per_round = []
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(requests // rounds):
                await one(*case)
            per_round.append((time.process_time() - t0) / (requests // rounds) * 1e6)
        report[name] = {
            "cpu_us_per_request": round(statistics.median(per_round), 1),
            "min": round(min(per_round), 1),
            "max": round(max(per_round), 1),
        }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000, help="per route, over all rounds")
    ap.add_argument("--rounds", type=int, default=5, help="the median round is reported")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="gwappbench-") as tmp, open(Path(tmp) / "access.log", "w") as log:
        sys.stderr = log  # the root handler writes where a deployed gateway's stderr goes
        try:
            log_setup()
            app = gateway_app()
            try:
                import uvloop

                report = uvloop.run(measure(app, args.requests, args.rounds))
            except ImportError:
                report = asyncio.run(measure(app, args.requests, args.rounds))
        finally:
            sys.stderr = sys.__stderr__
        report["access_log_lines"] = (Path(tmp) / "access.log").read_bytes().count(b"\n")
    report["pid_cpus"] = len(os.sched_getaffinity(0))
    if args.json:
        print(json.dumps(report, indent=2), file=out)
        return
    for name in ("health", "validate"):
        r = report[name]
        print(
            f"{name:9s} CPU {r['cpu_us_per_request']:7.1f} us/request (rounds {r['min']}-{r['max']})",
            file=out,
        )


if __name__ == "__main__":
    main()
