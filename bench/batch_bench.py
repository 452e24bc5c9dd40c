"""Batch benchmark: the Synthea NDJSON as ONE batch through the gateway, two validator replicas.

Issue 4 §7: the 10-patient Synthea bulk export (every `*.ndjson` but `log.ndjson`; 7,160
resources, each declaring a US Core profile in `meta.profile`) is POSTed as one NDJSON body to
`POST /validate/batch`; the clock runs from the POST until `GET /validate/status/{job}` says
`succeeded` (polled), and all results must then be readable from `GET /validate/results/{job}`.
That rate is compared with the engine's in-process rate on the same data on ONE core (pinned),
with the options the validator service uses (ValidateOptions defaults: invariants on, strict
off; terminology on). Target: rate_e2e / rate_in_process >= 60%.

The stack is the one of `bench/gateway_bench.py` (NATS/S3/Redis from `fhirschema_bus.servers`
on free loopback ports, the services as subprocesses); the validators load US Core 6.1.0, R4
core, THO and the extensions package locally (`FHIRSCHEMA_VALIDATOR_PACKAGES`).

Breakdown of the overhead:
- the gateway's share: the time until 202 (read + parse NDJSON + one publish per item, acked);
- CPU seconds of every process over the timed batch (`/proc/<pid>/stat` before/after): gateway,
  each validator, NATS, Redis, S3, and this client (polling);
- per message in the validators: CPU per message minus the engine's in-process CPU per resource
  = what the bus costs per message; with offline measurements (in this process, on the same
  messages) of the pieces we can time in isolation: decoding a ValidateRequest (pydantic, as the
  FastStream subscriber does) and building + encoding a ValidateResult; the rest is FastStream/
  nats-py (fetch, ack), the result publish and the job counting;
- the workers' Prometheus histogram `fhirschema_message_seconds` (wall time per message, with
  the message's share of concurrency) and `fhirschema_messages_processed_total` per replica.

    .venv/bin/python bench/batch_bench.py [--runs 2] [--json]

The first run of the batch warms the validators (packages parsed lazily, plans compiled); the
best later run is reported. The in-process rate likewise is the best timed pass after a warm-up
pass; resources are parsed up front there (JSON parsing is the bus's cost, not the engine's).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import SHARED, cpu_seconds, service_env, start, stop, wait_http

from fhirschema_bus.servers import free_port, local_stack

SYNTHEA = SHARED / "fhir" / "examples" / "synthea-bulk-10-patients"
PACKAGES = [
    SHARED / "fhir" / "packages" / n
    for n in (
        "hl7.fhir.us.core#6.1.0.tgz",
        "hl7.fhir.r4.core#4.0.1.tgz",
        "hl7.terminology.r4#7.0.1.tgz",
        "hl7.fhir.uv.extensions.r4#5.2.0.tgz",
    )
]
TARGET = 0.60


def synthea_lines() -> list[bytes]:
    lines: list[bytes] = []
    for f in sorted(SYNTHEA.glob("*.ndjson")):
        if f.name == "log.ndjson":
            continue
        lines += [ln for ln in f.read_bytes().splitlines() if ln.strip()]
    return lines


# --- the engine in-process ----------------------------------------------------------------------


def in_process(resources: list[dict[str, Any]], runs: int, cpu: int | None) -> dict[str, Any]:
    """The validator service's engine set-up (bootstrap.make_validator with ValidateOptions())."""
    from fhirschema.context import FhirContext
    from fhirschema.invariants import Invariants
    from fhirschema.terminology import Terminology
    from fhirschema.validator import Validator
    from fhirschema_bus.contracts import ValidateOptions

    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        opts = ValidateOptions()
        ctx = FhirContext.from_specs([str(p) for p in PACKAGES])
        v = Validator(
            ctx,
            invariants=Invariants() if opts.invariants else None,
            terminology=Terminology(ctx.resource),
            strict=opts.strict,
        )
        valid = 0
        t0 = time.perf_counter()
        for r in resources:  # warm-up: plans compiled, value sets expanded
            valid += v.validate(r, []).valid
        warm = time.perf_counter() - t0
        best = float("inf")
        for _ in range(runs):
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            for r in resources:
                v.validate(r, []).to_outcome()
            best = min(best, time.perf_counter() - t0)
            cpu_s = time.process_time() - c0
    finally:
        os.sched_setaffinity(0, before)
    n = len(resources)
    return {
        "resources": n,
        "valid": valid,
        "warm_up_seconds": round(warm, 2),
        "seconds": round(best, 3),
        "cpu_seconds": round(cpu_s, 3),
        "rate": round(n / best, 1),
        "ms_per_resource": round(best * 1000 / n, 3),
        "pinned_cpu": cpu,
    }


def offline_pieces(lines: list[bytes], job_id: str = "0" * 32) -> dict[str, float]:
    """Per-message costs of the validator's own (non-engine) steps we can time in isolation."""
    from fhirschema_bus.contracts import ValidateRequest, ValidateResult

    messages = [
        orjson.dumps({"job_id": job_id, "index": i, "profiles": [], "source": f"line {i}", "resource": orjson.loads(ln)})
        for i, ln in enumerate(lines)
    ]  # fmt: skip
    n = len(messages)
    t0 = time.perf_counter()
    for m in messages:
        ValidateRequest.model_validate_json(m)
    decode_pydantic = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for m in messages:
        orjson.loads(m)
    decode_orjson = (time.perf_counter() - t0) / n
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational"}],
    }
    t0 = time.perf_counter()
    for i in range(n):
        r = ValidateResult(
            job_id=job_id, index=i, valid=True, outcome=outcome, source="line 1", resource_type="X"
        )
        r.model_dump_json(exclude_none=True).encode()
    encode = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for ln in lines:
        orjson.loads(ln)
    parse = (time.perf_counter() - t0) / n
    return {
        "message_bytes_mean": round(sum(map(len, messages)) / n),
        "gateway_parse_line_ms": round(parse * 1000, 4),
        "validator_decode_pydantic_ms": round(decode_pydantic * 1000, 4),
        "validator_decode_orjson_ms": round(decode_orjson * 1000, 4),
        "validator_result_encode_ms": round(encode * 1000, 4),
    }


# --- end to end ---------------------------------------------------------------------------------


def http(method: str, url: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method=method, headers={"content-type": ctype} if ctype else {}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.status, r.read()


def scrape(port: int) -> dict[str, float]:
    """fhirschema_message_seconds sum/count and processed counts of one worker, by subject."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(("fhirschema_message_seconds_sum", "fhirschema_message_seconds_count",
                                "fhirschema_messages_processed_total")) and "batch" in line:  # fmt: skip
                name, value = line.rsplit(" ", 1)
                out[name.split("{", 1)[0]] = out.get(name.split("{", 1)[0], 0.0) + float(value)
    return out


def run_batch(base: str, body: bytes, n: int, poll: float, pids: dict[str, int], metrics: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    m0 = {k: scrape(p) for k, p in metrics.items()}
    t0 = time.perf_counter()
    status, data = http("POST", f"{base}/validate/batch", body, "application/x-ndjson")
    t_accepted = time.perf_counter() - t0
    assert status == 202, (status, data[:500])
    job = orjson.loads(data)["job"]
    polls = 0
    while True:
        _, data = http("GET", f"{base}/validate/status/{job}")
        polls += 1
        st = orjson.loads(data)
        if st["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(poll)
    elapsed = time.perf_counter() - t0
    cpu = {k: round(cpu_seconds(p) - cpu0[k], 2) for k, p in pids.items()}
    m1 = {k: scrape(p) for k, p in metrics.items()}
    t1 = time.perf_counter()
    _, results = http("GET", f"{base}/validate/results/{job}")
    t_results = time.perf_counter() - t1
    lines = [orjson.loads(ln) for ln in results.splitlines() if ln.strip()]
    indexes = {r["index"] for r in lines}
    assert st["state"] == "succeeded", st
    assert len(lines) == n and indexes == set(range(n)), (len(lines), len(indexes))
    in_order = [r["index"] for r in lines] == list(range(n))
    per_replica = {}
    for k in metrics:
        count = m1[k].get("fhirschema_message_seconds_count", 0) - m0[k].get(
            "fhirschema_message_seconds_count", 0
        )
        total = m1[k].get("fhirschema_message_seconds_sum", 0) - m0[k].get(
            "fhirschema_message_seconds_sum", 0
        )
        per_replica[k] = {
            "messages": int(count),
            "wall_ms_per_message": round(total * 1000 / max(count, 1), 2),
        }
    return {
        "job": job,
        "seconds": round(elapsed, 3),
        "rate": round(n / elapsed, 1),
        "accepted_seconds": round(t_accepted, 3),
        "status_polls": polls,
        "valid": st["valid"],
        "invalid": st["invalid"],
        "failed": st["failed"],
        "results_read_seconds": round(t_results, 3),
        "results_lines": len(lines),
        "results_in_order": in_order,
        "cpu_seconds": cpu,
        "replicas": per_replica,
    }


def end_to_end(
    body: bytes, n: int, runs: int, poll: float, replicas: int, workdir: Path, extra_env: dict[str, str]
) -> dict[str, Any]:
    with local_stack(workdir) as servers:
        port = free_port()
        env = service_env(servers, port)
        env["FHIRSCHEMA_VALIDATOR_PACKAGES"] = ",".join(str(p) for p in PACKAGES)
        env |= extra_env
        procs, metrics = {}, {}
        for i in range(replicas):
            metrics[f"validator{i + 1}"] = free_port()
            venv = {**env, "FHIRSCHEMA_WORKER_HTTP_PORT": str(metrics[f"validator{i + 1}"])}
            procs[f"validator{i + 1}"] = start("validator_service", venv, workdir / f"validator{i + 1}.log")
        procs["gateway"] = start("gateway", env, workdir / "gateway.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/health")
            pids = {k: p.pid for k, p in procs.items()}
            pids |= {k: srv.pid for k, srv in servers.items()}
            pids["client"] = os.getpid()
            for k, mport in metrics.items():  # the metrics endpoint is up once packages are loaded
                wait_http(f"http://127.0.0.1:{mport}/metrics")
                assert procs[k].poll() is None, (workdir / f"{k}.log").read_text()[-3000:]
            out = [run_batch(base, body, n, poll, pids, metrics) for _ in range(runs)]
        finally:
            for p in reversed(list(procs.values())):
                stop(p)
    return {"runs": out}


def breakdown(
    e2e: dict[str, Any], inproc: dict[str, Any], pieces: dict[str, float], n: int
) -> dict[str, Any]:
    cpu = e2e["cpu_seconds"]
    val_cpu = sum(v for k, v in cpu.items() if k.startswith("validator"))
    engine_cpu = inproc["cpu_seconds"]  # the same validations, one core, in-process
    per = 1000 / n
    bus_ms = (val_cpu - engine_cpu) * per
    return {
        "wall_seconds": e2e["seconds"],
        "gateway_accept_seconds": e2e["accepted_seconds"],
        "cpu_seconds_total": round(sum(v for k, v in cpu.items()), 2),
        "cpu_ms_per_resource": {k: round(v * per, 3) for k, v in cpu.items()},
        "validators_cpu_ms_per_resource": round(val_cpu * per, 3),
        "engine_cpu_ms_per_resource_in_process": round(engine_cpu * per, 3),
        "validator_overhead_cpu_ms_per_message": round(bus_ms, 3),
        "of_which_measured_offline_ms": {
            "decode_ValidateRequest_pydantic": pieces["validator_decode_pydantic_ms"],
            "build_and_encode_ValidateResult": pieces["validator_result_encode_ms"],
            "rest (faststream/nats-py fetch+ack, result publish, job counting, GC, ...)": round(
                bus_ms - pieces["validator_decode_pydantic_ms"] - pieces["validator_result_encode_ms"], 3
            ),
        },
        "two_cores_budget_seconds": round(2 * e2e["seconds"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="batches end to end; the first warms up")
    ap.add_argument("--inproc-runs", type=int, default=1, help="timed in-process passes after a warm-up")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--poll", type=float, default=0.05, help="status poll interval, seconds")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin the in-process run to (-1: no pin)")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="service setting")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    extra_env = dict(e.split("=", 1) for e in args.env)

    lines = synthea_lines()
    n = len(lines)
    body = b"\n".join(lines) + b"\n"
    report: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "resources": n,
        "body_bytes": len(body),
        "env": extra_env,
    }
    report["offline"] = offline_pieces(lines)
    if not args.skip_in_process:
        resources = [orjson.loads(ln) for ln in lines]
        report["in_process"] = in_process(resources, args.inproc_runs, None if args.cpu < 0 else args.cpu)
        del resources
        gc.collect()
    with tempfile.TemporaryDirectory(prefix="batchbench-") as tmp:
        e2e = end_to_end(body, n, args.runs, args.poll, args.replicas, Path(tmp), extra_env)
    report["end_to_end"] = e2e
    best = min(e2e["runs"][1:] or e2e["runs"], key=lambda r: r["seconds"])
    report["best"] = best
    if "in_process" in report:
        ratio = best["rate"] / report["in_process"]["rate"]
        report["ratio"] = round(ratio, 3)
        report["target"] = {"ratio": TARGET, "met": ratio >= TARGET}
        report["breakdown"] = breakdown(best, report["in_process"], report["offline"], n)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['cpus']} CPUs, {n} resources, NDJSON body {len(body) / 1e6:.1f} MB, {args.replicas} validators"
    )
    if ip := report.get("in_process"):
        print(
            f"in-process (1 core):  {ip['rate']:8.1f} res/s  {ip['seconds']:.2f} s  valid {ip['valid']}/{n}"
        )
    for i, r in enumerate(e2e["runs"]):
        print(
            f"end to end run {i + 1}:     {r['rate']:8.1f} res/s  {r['seconds']:.2f} s  (202 after "
            f"{r['accepted_seconds']:.2f} s; valid {r['valid']} invalid {r['invalid']} failed {r['failed']}; "
            f"{r['results_lines']} results read in {r['results_read_seconds']:.2f} s, "
            f"{'in index order' if r['results_in_order'] else 'NOT in index order'})"
        )
        print(f"  CPU s: {r['cpu_seconds']}  per replica: {r['replicas']}")
    if "ratio" in report:
        verdict = "MET" if report["target"]["met"] else "NOT MET"
        print(f"rate_e2e / rate_in_process = {report['ratio']:.1%} (target >= {TARGET:.0%}: {verdict})")
        print("breakdown:", json.dumps(report["breakdown"], indent=2))
    print("offline pieces (ms per message):", report["offline"])


if __name__ == "__main__":
    main()
