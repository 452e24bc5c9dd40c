"""Gateway benchmark: POST /validate latency (p50/p99) and requests/s at 32 concurrent clients.

Starts its own stack on free loopback ports: NATS (JetStream), S3 and Redis from
`fhirschema_bus.servers`, ONE validator replica (`python -m validator_service`, R4 core loaded
locally) and the gateway (`python -m gateway`, uvicorn). The client is a minimal keep-alive
HTTP/1.1 client on raw asyncio streams (32 connections, one request in flight each), so that the
load generator costs as little CPU as possible: on a 2-core machine it shares the cores with
the gateway, NATS and the validator.

Also measured for the breakdown: GET /health through the same client (HTTP floor of the
gateway) and the engine in-process on the same resource (validation floor).

    .venv/bin/python bench/gateway_bench.py [--seconds 10] [--clients 32] [--json] [--profile FILE]

`--api-keys N`: the gateway with FHIRSCHEMA_AUTH=required and a key file of N keys (the
client sends the last one), to see what the key check costs; default 0: auth off.
`--profile FILE`: py-spy samples the gateway during the POST /validate run and writes its
collapsed stacks (`--format raw`: one "frame;frame;... count" line per stack) to FILE.

Targets (issue 4 §7): p50 <= 5 ms, p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import stack
from stack import SHARED, cpu_seconds, wait_http

from fhirschema_bus.processes import start_service as start
from fhirschema_bus.processes import stop_process as stop
from fhirschema_bus.servers import free_port, local_stack

R4 = SHARED / "fhir" / "packages" / "hl7.fhir.r4.core#4.0.1.tgz"
PATIENT = SHARED / "fhir" / "examples" / "r4-spec" / "Patient-example.json"
TARGET_P50_MS, TARGET_P99_MS = 5.0, 20.0


def patient() -> bytes:
    if PATIENT.is_file():
        return PATIENT.read_bytes()
    return orjson.dumps({"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01"})


# --- the stack --------------------------------------------------------------------------------


def service_env(servers: dict[str, Any], gateway_port: int) -> dict[str, str]:
    return stack.service_env(servers, gateway_port, FHIRSCHEMA_VALIDATOR_PACKAGES=str(R4))


# --- the load ---------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def call(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


def build_request(method: str, path: str, port: int, body: bytes = b"", key: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if key is not None:
        head += f"X-API-Key: {key}\r\n"
    if body:
        head += f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def load(port: int, request: bytes, clients: int, seconds: float) -> dict[str, Any]:
    conns = [Conn(*await asyncio.open_connection("127.0.0.1", port)) for _ in range(clients)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status = await conn.call(request)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.writer.close()
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "requests": len(lat),
        "seconds": round(elapsed, 2),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p90_ms": round(q[89] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2),
        "statuses": statuses,
    }


def cpu_shares(pids: dict[str, int], run: Any) -> tuple[Any, dict[str, float]]:
    """Run `run()` and report the CPU seconds each process used meanwhile (per request below)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    result = run()
    return result, {k: round(cpu_seconds(p) - before[k], 2) for k, p in pids.items()}


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` for `seconds` (100 Hz: little CPU taken from the measured run)."""
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100",
           "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def engine_floor(body: bytes, n: int = 2000) -> dict[str, Any]:
    from fhirschema.context import FhirContext
    from fhirschema.invariants import Invariants
    from fhirschema.terminology import Terminology
    from fhirschema.validator import Validator

    ctx = FhirContext.from_specs([str(R4)])
    v = Validator(ctx, invariants=Invariants(), terminology=Terminology(ctx.resource))
    res = orjson.loads(body)
    for _ in range(50):
        v.validate(res)
    t0 = time.perf_counter()
    for _ in range(n):
        v.validate(res).to_outcome()
    per = (time.perf_counter() - t0) / n
    return {"ms_per_resource": round(per * 1000, 3), "resources_per_s": round(1 / per, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--api-keys", type=int, default=0, help="auth on, with a key file of N keys")
    ap.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of the gateway under load")
    args = ap.parse_args()
    body = patient()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "clients": args.clients, "resource_bytes": len(body)}
    report["engine_in_process"] = engine_floor(body)
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp, local_stack(Path(tmp)) as servers:
        port = free_port()
        env = service_env(servers, port)
        key = None
        if args.api_keys > 0:
            keys = [f"bench-key-{n}" for n in range(args.api_keys)]
            (Path(tmp) / "keys").mkdir()  # a folder of its own, as a mounted Secret: not beside the logs
            key_file = Path(tmp) / "keys" / "api_keys"
            key_file.write_text("".join(f"{hashlib.sha256(k.encode()).hexdigest()} validate k{n}\n"
                                        for n, k in enumerate(keys)))  # fmt: skip
            env.update(FHIRSCHEMA_AUTH="required", FHIRSCHEMA_API_KEYS_FILE=str(key_file))
            key = keys[-1]
        report["api_keys"] = args.api_keys
        procs = [start("validator_service", env, Path(tmp) / "validator.log")]
        procs.append(start("gateway", env, Path(tmp) / "gateway.log"))
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/health")
            for _ in range(20):  # warm-up: R4 core loaded, the Patient plan compiled
                wait_http(f"{base}/validate?timeout=120", body, key=key)
            health = build_request("GET", "/health", port)
            validate = build_request("POST", "/validate", port, body, key)
            asyncio.run(load(port, validate, args.clients, 2.0))  # warm the connections and caches
            report["health"] = asyncio.run(load(port, health, args.clients, args.seconds / 2))
            pids = {"gateway": procs[1].pid, "validator": procs[0].pid, "nats": servers["nats"].pid}
            pids["client"] = os.getpid()
            spy = profile(procs[1].pid, args.seconds, args.profile) if args.profile else None
            report["validate"], cpu = cpu_shares(
                pids, lambda: asyncio.run(load(port, validate, args.clients, args.seconds))
            )
            if spy is not None:
                spy.wait(30)
            n = report["validate"]["requests"]
            report["cpu_ms_per_request"] = {k: round(v * 1000 / n, 3) for k, v in cpu.items()}
            report["validate_1_client"] = asyncio.run(load(port, validate, 1, args.seconds / 2))
        finally:
            for p in reversed(procs):
                stop(p)
    v = report["validate"]
    report["targets"] = {
        "p50_ms": TARGET_P50_MS,
        "p99_ms": TARGET_P99_MS,
        "p50_met": v["p50_ms"] <= TARGET_P50_MS,
        "p99_met": v["p99_ms"] <= TARGET_P99_MS,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['cpus']} CPUs, {args.clients} clients, Patient of {len(body)} bytes")
    e = report["engine_in_process"]
    print(
        f"engine in-process:       {e['ms_per_resource']} ms/resource ({e['resources_per_s']}/s, one thread)"
    )
    for name in ("health", "validate", "validate_1_client"):
        r = report[name]
        print(
            f"{name:24s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p90 {r['p90_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  max {r['max_ms']:7.2f} ms  statuses {r['statuses']}"
        )
    print("CPU ms per POST /validate (32 clients):", report["cpu_ms_per_request"])
    t = report["targets"]
    print(f"targets: p50 <= {TARGET_P50_MS} ms {'MET' if t['p50_met'] else 'NOT MET'}, "
          f"p99 <= {TARGET_P99_MS} ms {'MET' if t['p99_met'] else 'NOT MET'}")  # fmt: skip


if __name__ == "__main__":
    main()
