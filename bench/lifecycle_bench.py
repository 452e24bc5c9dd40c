"""Start and stop times of the service processes (issue 12 §3: ready ≤ 1 s once packages are
loaded, stopped ≤ 5 s).

    .venv/bin/python bench/lifecycle_bench.py [--runs 3] [--shared ../shared]

Starts its own NATS, Valkey and SeaweedFS (the gateway's /ready checks all three), then per run and service:
spawns `python -m <service>`, polls `/ready` every 10 ms, sends SIGTERM once ready and waits for
the exit. The validator runs in local mode on R4 core (FHIRSCHEMA_VALIDATOR_PACKAGES); its
package load, which it logs ("packages loaded in X s"), is reported apart and taken out of
"ready after load". Stops here are idle ones; a stop with work in flight is bounded by
FHIRSCHEMA_WORKER_DRAIN_SECONDS (tests/services/test_lifecycle.py).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "shared")]

from fhirschema_bus.servers import S3_ACCESS_KEY, S3_SECRET_KEY, free_port, start_nats, start_redis, start_s3  # noqa: E402

SERVICES = [str(ROOT / "services" / n) for n in ("validator", "storage", "converter", "gateway", "ig-ingest")]
LOADED = re.compile(r"packages loaded in ([0-9.]+) s")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def one(module: str, env: dict[str, str], port: int, log: Path) -> dict[str, float]:
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not ready(f"http://127.0.0.1:{port}/ready"):
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"{module} did not get ready (exit {proc.poll()}):\n{log.read_text()[-2000:]}")
            time.sleep(0.01)
        up = time.monotonic() - t0
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        down = time.monotonic() - t1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = LOADED.search(log.read_text())
    load = float(found.group(1)) if found else 0.0
    return {"ready": up, "load": load, "ready_after_load": up - load, "stop": down, "rc": proc.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--services", nargs="+", default=["converter_service", "validator_service", "gateway"])
    args = parser.parse_args()
    r4 = args.shared / "fhir" / "packages" / "hl7.fhir.r4.core#4.0.1.tgz"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        nats, redis, s3 = start_nats(base), start_redis(base), start_s3(base)
        try:
            clean = {k: v for k, v in os.environ.items() if not k.startswith("FHIRSCHEMA_")}
            env = {
                **clean, "PYTHONPATH": os.pathsep.join(SERVICES), "FHIRSCHEMA_NATS_URL": nats.url,
                "FHIRSCHEMA_REDIS_URL": redis.url, "FHIRSCHEMA_S3_ACCESS_KEY": S3_ACCESS_KEY,
                "FHIRSCHEMA_S3_SECRET_KEY": S3_SECRET_KEY, "FHIRSCHEMA_S3_ENDPOINT": f"127.0.0.1:{s3.port}", "FHIRSCHEMA_VALIDATOR_PACKAGES": str(r4),
                "FHIRSCHEMA_AUTH": "off",
            }  # fmt: skip
            print(f"{'service':<18}{'ready s':>9}{'load s':>9}{'after load':>12}{'stop s':>9}")
            for module in args.services:
                for run in range(args.runs):
                    port = free_port()
                    extra = {"FHIRSCHEMA_GATEWAY_PORT" if module == "gateway" else "FHIRSCHEMA_WORKER_HTTP_PORT": str(port)}
                    r = one(module, {**env, **extra}, port, base / f"{module}-{run}.log")
                    print(f"{module:<18}{r['ready']:>9.2f}{r['load']:>9.2f}{r['ready_after_load']:>12.2f}"
                          f"{r['stop']:>9.2f}  exit {r['rc']:.0f}")  # fmt: skip
        finally:
            for server in (nats, redis, s3):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
