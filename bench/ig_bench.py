"""The IG pipeline end to end (issue 11 §5): R4 core + US Core 6.1.0 with their dependencies
from a local registry, from POST /ig/process until every schema is queryable. Target ≤ 10 s.

Starts its own NATS, S3 (SeaweedFS) and Valkey, the local registry server
(tests/services/registry_server.py) over ../shared/fhir/packages, and storage, ig-ingest, a
validator (repository mode) and the gateway as processes — nothing ingested at start. Then, per
run (each on fresh buckets and a fresh repository: new servers):

  POST /ig/process {"packages": [R4 core, US Core 6.1.0]}   (dependencies: true)
  job      GET /ig/status/{job} polled until the job is final
  listed   GET /schemas?package=... lists as many schemas as the job reports, for every package
  validate POST /validate?package=hl7.fhir.us.core#6.1.0 of a US Core example gets a verdict
  cpu      CPU seconds each process (services and servers) used from the POST to the verdict: on
           a loaded machine a steadier figure than the wall times

    .venv/bin/python bench/ig_bench.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from stack import REPO, SHARED, cpu_of, service_env, wait_http

sys.path.insert(0, str(REPO))

from fhirschema_bus.processes import start_service, stop_process
from fhirschema_bus.servers import free_port, local_stack
from tests.services.registry_server import serve_registry

PACKAGES = SHARED / "fhir" / "packages"
EXAMPLE = SHARED / "fhir" / "examples" / "hl7.fhir.us.core#6.1.0" / "Patient-example.json"
ASKED = ["hl7.fhir.r4.core#4.0.1", "hl7.fhir.us.core#6.1.0"]
TARGET_SECONDS = 10.0
SERVICES = ("storage_service", "ig_ingest", "validator_service", "gateway")


def env_for(servers: dict[str, Any], registry: str, port: int) -> dict[str, str]:
    return service_env(
        servers, port, clean=True,
        FHIRSCHEMA_PACKAGE_SOURCES=registry,
        FHIRSCHEMA_PACKAGES="",  # nothing at start: the run ingests everything
        FHIRSCHEMA_IG_CI_BUILD_URL="",
        FHIRSCHEMA_WORKER_HTTP_PORT="0",
    )  # fmt: skip


def one_run(c: httpx.Client, pids: dict[str, int]) -> dict[str, Any]:
    cpu0 = cpu_of(pids)
    t0 = time.monotonic()
    r = c.post("/ig/process", json={"packages": ASKED})
    r.raise_for_status()
    status_path = r.headers["location"]
    while (job := c.get(status_path).json())["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
    t_job = time.monotonic() - t0
    ingested = {
        f"{p['name']}#{p['version']}": p["schemas"] for p in job["packages"] if p["state"] == "succeeded"
    }
    pending = dict(ingested)
    while pending:
        for spec, n in list(pending.items()):
            listed = c.get("/schemas", params={"package": spec, "limit": 1})
            if listed.status_code == 200 and int(listed.headers["x-total-count"]) >= n:
                del pending[spec]
        if pending:
            time.sleep(0.05)
    t_listed = time.monotonic() - t0
    body = EXAMPLE.read_bytes()
    while True:
        v = c.post("/validate", content=body, params={"package": ASKED[1]},
                   headers={"content-type": "application/fhir+json"})  # fmt: skip
        if v.status_code == 200:
            break
        time.sleep(0.05)
    t_valid = time.monotonic() - t0
    cpu = {k: round(v - cpu0[k], 2) for k, v in cpu_of(pids).items()}
    return {
        "job_state": job["state"],
        "job_s": round(t_job, 2),
        "listed_s": round(t_listed, 2),
        "validate_s": round(t_valid, 2),
        "verdict": v.headers.get("x-validation-result"),
        "schemas": ingested,
        "missing": sorted({d for p in job["packages"] for d in p.get("missing_dependencies", [])}),
        "cpu": cpu,
        "cpu_total": round(sum(cpu.values()), 2),
    }


def bench_once(base: Path) -> dict[str, Any]:
    with local_stack(base) as servers, serve_registry(PACKAGES) as reg:
        port = free_port()
        env = env_for(servers, reg.base, port)
        procs = {m: start_service(m, env, base / f"{m}.log") for m in SERVICES}
        pids = {m: p.pid for m, p in procs.items()} | {k: srv.pid for k, srv in servers.items()}
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                time.sleep(2.0)  # the workers connected and subscribed (no request waits on them)
                return one_run(c, pids)
        finally:
            for p in procs.values():
                stop_process(p)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the service logs in this folder")
    args = parser.parse_args()
    results = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            base = args.keep / f"run{n}" if args.keep else Path(tmp)
            base.mkdir(parents=True, exist_ok=True)
            results.append(bench_once(base))
        if not args.json:
            r = results[-1]
            print(f"run {n + 1}: job {r['job_state']} after {r['job_s']} s, every schema listed after "
                  f"{r['listed_s']} s, US Core validation ({r['verdict']}) after {r['validate_s']} s; "
                  f"schemas {r['schemas']}; CPU s {r['cpu_total']} {r['cpu']}", flush=True)  # fmt: skip
    load = os.getloadavg()[0]
    best = min(r["listed_s"] for r in results)
    cpu = min(r["cpu_total"] for r in results)
    if args.json:
        print(json.dumps({"runs": results, "load1": load, "target_s": TARGET_SECONDS}, indent=2))
    else:
        print(f"missing dependencies (not in the registry): {', '.join(results[-1]['missing'])}")
        print(f"best {best} s until every schema is queryable (target ≤ {TARGET_SECONDS:g} s), "
              f"least CPU {cpu} s (all processes), load {load:.1f}")  # fmt: skip
    return 0 if all(r["job_state"] == "succeeded" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
