"""Start and stop times of the service processes (issue 12 §3: ready ≤ 1 s once packages are
loaded, stopped ≤ 5 s).

    .venv/bin/python bench/lifecycle_bench.py [--runs 3] [--shared ../shared] [--services ...]   # default: every service

Starts its own NATS, Valkey and SeaweedFS (the gateway's /ready checks all three), then per run and service:
spawns `python -m <service>`, polls `/ready` every 10 ms, sends SIGTERM once ready and waits for
the exit. `validator_service` is the validator in local mode on R4 core's tarball
(FHIRSCHEMA_VALIDATOR_PACKAGES), with an empty FHIRSCHEMA_VALIDATOR_CACHE_DIR: its first run reads
the file ("file") and writes the cache after ready, the later ones read the cache ("cached"); its
package load, which it logs ("packages loaded in X s"), is reported apart and taken out of
"ready after load". `validator_repository` is the validator as `make up` and k8s run it: R4 core
already ingested (its tarball in S3, registered with the storage service, which this bench runs
too), the replica following the repository; its first run unpacks the tarball into an empty
FHIRSCHEMA_VALIDATOR_CACHE_DIR ("cold"), the later ones find it there — what a restart does.
Stops here are idle ones; a stop with work in flight is bounded by
FHIRSCHEMA_WORKER_DRAIN_SECONDS (tests/services/test_lifecycle.py).
"""

from __future__ import annotations

import argparse
import compileall
import functools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "shared")]

from fhirschema_bus.processes import start_service, stop_process  # noqa: E402
from fhirschema_bus.servers import S3_ACCESS_KEY, S3_SECRET_KEY, free_port, start_nats, start_redis, start_s3  # noqa: E402

SERVICES = [str(ROOT / "services" / n) for n in ("validator", "storage", "converter", "gateway", "ig-ingest")]
# Every service, in one command: the gateway with a validator replica beside it (its /ready needs one).
ALL = ["converter_service", "storage_service", "ig_ingest", "validator_service", "validator_repository", "gateway"]  # fmt: skip
LOADED = re.compile(r"packages loaded in ([0-9.]+) s")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def one(
    module: str, env: dict[str, str], port: int, log: Path, before_stop: Callable[[], object] | None = None
) -> dict[str, float]:
    t0 = time.monotonic()
    proc = start_service(module, env, log)
    try:
        while not ready(f"http://127.0.0.1:{port}/ready"):
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(
                    f"{module} did not get ready (exit {proc.poll()}):\n{log.read_text()[-2000:]}"
                )
            time.sleep(0.01)
        up = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid)
        if before_stop is not None:
            before_stop()
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"{module} did not stop within 30 s of SIGTERM; log tail:\n{log.read_text()[-600:]}")
        down = time.monotonic() - t1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = LOADED.search(log.read_text())
    load = float(found.group(1)) if found else 0.0
    return {
        "ready": up,
        "cpu": cpu,
        "load": load,
        "ready_after_load": up - load,
        "stop": down,
        "rc": proc.returncode,
    }


def compile_tree(root: Path) -> None:
    """The tree's modules as bytecode first, as installed services have them (`make bytecode`):
    with PYTHONDONTWRITEBYTECODE=1 set, each start would compile them again."""
    for part in ("shared", "services"):
        if not compileall.compile_dir(root / part, quiet=1):
            raise SystemExit(f"{root / part}: some module does not compile")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far: what a start costs, whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def settled(pid: int, timeout: float = 60.0) -> bool:
    """A process beside the one measured has finished what it does after ready (a validator warms
    its plans up in threads): less than 20 ms of CPU in half a second. Otherwise the gateway's
    start shared the two cores with it (/health after 2.1-2.9 s instead of 0.8-1.1 s at load 2.6)."""
    deadline, last = time.monotonic() + timeout, cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return True
        last = now
    return False


def cache_written(cache: Path) -> bool:
    """The replica writes its package cache after ready: a stop before it ends would cut it."""
    return wait_for(lambda: any(p.name.isalnum() for p in cache.glob("*")), 60)


def register_core(env: dict[str, str], tgz: Path, log: Path) -> subprocess.Popen[bytes]:
    """The storage service, running, with R4 core's tarball in S3 and registered: the repository
    a validator replica follows (as after ig-ingest). Returns the storage process."""
    import asyncio

    import nats

    from fhirschema_bus.contracts import IndexPackage
    from fhirschema_bus.object_store import ObjectStore
    from fhirschema_bus.settings import S3Settings
    from fhirschema_bus.storage import StorageClient, nats_request

    storage = start_service("storage_service", env, log)

    async def run() -> None:
        settings = S3Settings(
            endpoint=env["FHIRSCHEMA_S3_ENDPOINT"], access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY
        )
        store = ObjectStore(settings)
        await store.aensure_buckets([settings.bucket_packages])
        ref = await store.aput_bytes(settings.bucket_packages, f"bench/{tgz.name}", tgz.read_bytes())
        nc = await nats.connect(env["FHIRSCHEMA_NATS_URL"])
        try:
            deadline = time.monotonic() + 120
            while True:  # storage answers once it has started
                try:
                    await StorageClient(nats_request(nc)).index_package(
                        IndexPackage(package="hl7.fhir.r4.core#4.0.1", object=ref), timeout=30)  # fmt: skip
                    return
                except Exception:
                    if time.monotonic() > deadline or storage.poll() is not None:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    asyncio.run(run())
    return storage


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--services", nargs="+", default=ALL)
    args = parser.parse_args()
    r4 = args.shared / "fhir" / "packages" / "hl7.fhir.r4.core#4.0.1.tgz"
    compile_tree(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        nats, redis, s3 = start_nats(base), start_redis(base), start_s3(base)
        storage: subprocess.Popen[bytes] | None = None
        helper: subprocess.Popen[bytes] | None = None
        try:
            clean = {k: v for k, v in os.environ.items() if not k.startswith("FHIRSCHEMA_")}
            env = {
                **clean, "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), *SERVICES]), "FHIRSCHEMA_NATS_URL": nats.url,
                "FHIRSCHEMA_REDIS_URL": redis.url, "FHIRSCHEMA_S3_ACCESS_KEY": S3_ACCESS_KEY,
                "FHIRSCHEMA_S3_SECRET_KEY": S3_SECRET_KEY, "FHIRSCHEMA_AUTH": "off", "FHIRSCHEMA_S3_ENDPOINT": f"127.0.0.1:{s3.port}", "FHIRSCHEMA_VALIDATOR_PACKAGES": str(r4),
            }  # fmt: skip
            if {"validator_repository", "gateway"} & set(args.services):  # both need R4 core registered
                storage = register_core(env, r4, base / "storage.log")
            print(f"{'service':<22}{'ready s':>9}{'CPU s':>7}{'load s':>9}{'after load':>12}{'stop s':>9}")
            for name in args.services:
                module, extra = name, {}
                if name == "validator_service":  # local mode: the tarball read through its own cache
                    extra = {"FHIRSCHEMA_VALIDATOR_CACHE_DIR": str(base / "local-cache")}
                if name == "validator_repository":
                    module = "validator_service"
                    extra = {
                        "FHIRSCHEMA_VALIDATOR_PACKAGES": "",
                        "FHIRSCHEMA_VALIDATOR_CACHE_DIR": str(base / "cache"),
                    }
                if name == "gateway" and storage is not None and helper is None:
                    # The gateway is ready only while a validator replica holds the configured
                    # packages (issue 9): one runs beside it, from the repository.
                    helper_port = free_port()
                    helper = start_service(
                        "validator_service",
                        {**env, "FHIRSCHEMA_VALIDATOR_PACKAGES": "", "FHIRSCHEMA_WORKER_HTTP_PORT": str(helper_port),
                         "FHIRSCHEMA_VALIDATOR_CACHE_DIR": str(base / "cache")},
                        base / "validator-beside.log",
                    )  # fmt: skip
                    wait_for(lambda p=helper_port: ready(f"http://127.0.0.1:{p}/ready"), 120)
                    settled(helper.pid)
                for run in range(args.runs):
                    port = free_port()
                    extra[
                        "FHIRSCHEMA_GATEWAY_PORT" if module == "gateway" else "FHIRSCHEMA_WORKER_HTTP_PORT"
                    ] = str(port)
                    cache = base / ("cache" if name == "validator_repository" else "local-cache")
                    cached = any(p.name.isalnum() for p in cache.glob("*"))
                    # The first run's copy is written after ready: let it finish before the stop.
                    settle = (
                        functools.partial(cache_written, cache)
                        if name in ("validator_repository", "validator_service") and not cached
                        else None
                    )
                    r = one(module, {**env, **extra}, port, base / f"{name}-{run}.log", settle)
                    label = name
                    if name == "validator_repository":
                        label = f"validator ({'cached' if cached else 'from S3'})"
                    elif name == "validator_service":
                        label = f"validator local ({'cached' if cached else 'file'})"
                    print(f"{label:<22}{r['ready']:>9.2f}{r['cpu']:>7.2f}{r['load']:>9.2f}{r['ready_after_load']:>12.2f}"
                          f"{r['stop']:>9.2f}  exit {r['rc']:.0f}")  # fmt: skip
        finally:
            for proc in (helper, storage):  # also when a run failed: nothing left behind
                if proc is not None:
                    stop_process(proc)
            for server in (nats, redis, s3):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
