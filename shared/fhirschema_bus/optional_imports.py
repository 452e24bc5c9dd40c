"""Optional dependencies that libraries import whenever they are installed, for features the
services leave off. A service's own process marks them absent before it imports those libraries,
so each library takes its "not installed" path and the start is cheaper (issue 12 §3: ready ≤ 1 s).

Only a service's `__main__` calls `skip` (when run as the program, never on import): a test or a
script that imports a service's modules beside others keeps every library importable.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping

# What each one would have cost is in callgrind instruction counts: `import X` with and without
# the name marked absent (deterministic; wall clocks are noisy on the shared machine).
EVERY_SERVICE = {
    # pycryptodome (imported by minio for its admin API, which we do not use) parses C
    # declarations with pycparser through cffi at import; without cffi it takes its ctypes path.
    # nacl (NKeys) and argon2 load their compiled cffi modules without it. import minio: 1010 -> 819 M.
    "cffi",
}
WORKERS = {
    # FastStream imports uvicorn (and click) for its ASGI runner; workers serve their probes with
    # http.server (probes.py). import faststream.nats: 1378 -> 1293 M.
    "uvicorn",
}
GATEWAY = {
    # FastAPI asks, for each route's annotations, whether they are pydantic.v1 models, importing
    # pydantic.v1 to see (it takes ImportError as "no"); the gateway has none.
    # import gateway.__main__: 2846 -> 2767 M (with the others skipped).
    "pydantic.v1",
}
WHILE_TRACING_IS_OFF = {
    # redis-py imports the OTel metrics SDK for its own OTel metrics, which we never turn on (our
    # metrics are Prometheus'). Tracing's gRPC exporter needs it, hence only with tracing off.
    # import redis.asyncio: 713 -> 580 M.
    "opentelemetry.sdk.metrics",
}


def unused(worker: bool, tracing_on: bool) -> set[str]:
    """For a worker process, or else the gateway's."""
    return EVERY_SERVICE | (WORKERS if worker else GATEWAY) | (set() if tracing_on else WHILE_TRACING_IS_OFF)


def skip(worker: bool, env: Mapping[str, str] | None = None) -> None:
    """Mark what this service process never uses as absent, unless something imported it already."""
    from fhirschema_bus import tracing  # every service imports it anyway

    on = tracing.enabled() if env is None else tracing.enabled(env)
    for name in unused(worker, on):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "import X" raises ImportError


def service_process(worker: bool) -> None:
    """First thing in a service's `__main__` when run as the program, before any library is
    imported: the collector paused while the service's modules are imported (what they build
    lives as long as the process; `entry.load()` resumes it), and what it never uses skipped."""
    gc.disable()
    skip(worker)
