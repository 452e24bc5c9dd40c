"""Start to ready, this tree against another checkout, run by run in turn (A B A B ...): CPU
seconds to ready, wall seconds to ready (which the load stretches) and stop seconds, medians
and ranges. On a loaded machine one tree's runs all together would meet another load than the
other's; in turn, both meet the same.

    git worktree add --detach /tmp/base main && (cd /tmp/base && make engine)
    .venv/bin/python bench/lifecycle_ab.py /tmp/base [--runs 5] [--services converter_service ...]

Both trees run under this interpreter, each with its own sources first on PYTHONPATH (build the
other tree's engine, or its validator runs as Python). Services as in lifecycle_bench.py:
`validator_service` is local mode on R4 core's tarball with a cache folder of its own per tree
(the first, uncounted, pair of runs fills it); the gateway runs beside a validator replica of
this tree following the repository (R4 core registered through the storage service).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from lifecycle_bench import ROOT, compile_tree, one, ready, register_core, settled, wait_for

from fhirschema_bus.processes import start_service, stop_process
from fhirschema_bus.servers import S3_ACCESS_KEY, S3_SECRET_KEY, free_port, start_nats, start_redis, start_s3

NAMES = ("validator", "storage", "converter", "gateway", "ig-ingest")


def pythonpath(tree: Path) -> str:
    return os.pathsep.join([str(tree / "shared"), *(str(tree / "services" / n) for n in NAMES)])


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("other", type=Path, help="the other checkout (B)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--services", nargs="+",
                        default=["converter_service", "storage_service", "ig_ingest", "validator_service", "gateway"])  # fmt: skip
    parser.add_argument("--other-as-is", action="store_true",
                        help="no bytecode written for the other tree: as a tree before `make bytecode` ran")  # fmt: skip
    args = parser.parse_args()
    trees = {"A (this)": ROOT, "B (other)": args.other.resolve()}
    r4 = args.shared / "fhir" / "packages" / "hl7.fhir.r4.core#4.0.1.tgz"
    for label, tree in trees.items():  # as installed: bytecode (a tree without it pays a compile per start)
        if not (args.other_as_is and label.startswith("B")):
            compile_tree(tree)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        nats, redis, s3 = start_nats(base), start_redis(base), start_s3(base)
        helpers: list[subprocess.Popen[bytes]] = []
        try:
            clean = {k: v for k, v in os.environ.items() if not k.startswith("FHIRSCHEMA_")}
            env = {
                **clean, "PYTHONPATH": pythonpath(ROOT), "FHIRSCHEMA_NATS_URL": nats.url, "FHIRSCHEMA_REDIS_URL": redis.url,
                "FHIRSCHEMA_S3_ACCESS_KEY": S3_ACCESS_KEY, "FHIRSCHEMA_S3_SECRET_KEY": S3_SECRET_KEY,
                "FHIRSCHEMA_AUTH": "off", "FHIRSCHEMA_S3_ENDPOINT": f"127.0.0.1:{s3.port}",
            }  # fmt: skip
            if "gateway" in args.services:  # its /ready needs a replica holding R4 core
                helpers.append(register_core(env, r4, base / "storage.log"))
                port = free_port()
                helpers.append(start_service(
                    "validator_service",
                    {**env, "FHIRSCHEMA_WORKER_HTTP_PORT": str(port), "FHIRSCHEMA_VALIDATOR_CACHE_DIR": str(base / "cache-beside")},
                    base / "validator-beside.log",
                ))  # fmt: skip
                wait_for(lambda: ready(f"http://127.0.0.1:{port}/ready"), 120)
                settled(helpers[-1].pid)
            print(f"{'service':<20}{'tree':<11}{'CPU s to ready':>22}{'wall s to ready':>22}{'stop s':>20}"
                  f"{'package load s':>22}")  # fmt: skip
            for name in args.services:
                got: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
                for run in range(args.runs + 1):  # the first pair warms caches: not counted
                    for label, tree in trees.items():
                        port = free_port()
                        key = (
                            "FHIRSCHEMA_GATEWAY_PORT" if name == "gateway" else "FHIRSCHEMA_WORKER_HTTP_PORT"
                        )
                        cache = base / f"local-cache-{label[0]}"
                        extra = {"PYTHONPATH": pythonpath(tree), key: str(port)}
                        if name == "validator_service":
                            extra |= {
                                "FHIRSCHEMA_VALIDATOR_PACKAGES": str(r4),
                                "FHIRSCHEMA_VALIDATOR_CACHE_DIR": str(cache),
                            }
                        if name == "ig_ingest":  # nothing to ingest at start: no registry is reached
                            extra |= {"FHIRSCHEMA_PACKAGES": ""}
                        # The first run's cache is written after ready: let it finish (a tree
                        # without one waits 30 s for nothing).
                        settle = (
                            (lambda c=cache: wait_for(lambda: any(p.name.isalnum() for p in c.glob("*")), 30))
                            if name == "validator_service" and run == 0 else None
                        )  # fmt: skip
                        r = one(name, {**env, **extra}, port, base / f"{name}-{label[0]}-{run}.log", settle)
                        if run:
                            got[label].append(r)
                for label, rows in got.items():
                    print(f"{name:<20}{label:<11}{summary([r['cpu'] for r in rows]):>22}"
                          f"{summary([r['ready'] for r in rows]):>22}{summary([r['stop'] for r in rows]):>20}{summary([r['load'] for r in rows]):>22}"
                          f"  exit {sorted({int(r['rc']) for r in rows})}", flush=True)  # fmt: skip
        finally:
            for proc in helpers:
                stop_process(proc)
            for server in (nats, redis, s3):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
