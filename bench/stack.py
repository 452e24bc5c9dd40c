"""What the benchmarks that start a stack share: the services' environment over a `local_stack`
(NATS, S3, Redis on free loopback ports), waiting for an HTTP endpoint, and the CPU seconds a
process used (a figure that holds better than wall time on a loaded machine)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
SERVICES = ("gateway", "validator", "storage", "converter", "ig-ingest")


def service_env(
    servers: dict[str, Any], gateway_port: int, *, clean: bool = False, **extra: str
) -> dict[str, str]:
    """The environment of the services (python -m <service>) on these servers. `clean`: without
    the caller's FHIRSCHEMA_* variables (a benchmark that sets every one it needs)."""
    s3 = servers["s3"]
    paths = [str(REPO / "services" / n) for n in SERVICES]
    base = {k: v for k, v in os.environ.items() if not (clean and k.startswith("FHIRSCHEMA_"))}
    return {
        **base,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "FHIRSCHEMA_NATS_URL": servers["nats"].url,
        "FHIRSCHEMA_S3_ENDPOINT": f"127.0.0.1:{s3.port}",
        "FHIRSCHEMA_S3_ACCESS_KEY": s3.access_key,
        "FHIRSCHEMA_S3_SECRET_KEY": s3.secret_key,
        "FHIRSCHEMA_REDIS_URL": servers["redis"].url,
        "FHIRSCHEMA_GATEWAY_PORT": str(gateway_port),
        "FHIRSCHEMA_AUTH": "off",  # loopback benchmarks measure the pipeline, not the key check
        **extra,
    }


def wait_http(url: str, body: bytes | None = None, timeout: float = 120.0, key: str | None = None) -> None:
    """Until `url` answers 200 (POSTing `body` when given; `key`: an X-API-Key)."""
    deadline = time.monotonic() + timeout
    headers = {"content-type": "application/fhir+json", **({"x-api-key": key} if key else {})}
    while True:
        try:
            req = urllib.request.Request(url, data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}
