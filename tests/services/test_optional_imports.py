"""A service process marks optional libraries it never uses absent (fhirschema_bus/optional_imports.py):
the libraries that would import them still work, and what they are for still does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fhirschema_bus import optional_imports

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from fhirschema_bus import optional_imports
optional_imports.skip(worker=sys.argv[1] == "worker")
import faststream.nats, minio, nkeys, redis.asyncio
from Crypto.Cipher import AES  # minio's admin crypto: pycryptodome through ctypes
from argon2.low_level import Type, hash_secret_raw
seed = nkeys.encode_seed(b"0" * 32, nkeys.PREFIX_BYTE_USER)  # NATS NKey credentials still sign
signed = nkeys.from_seed(seed).sign(b"nonce")
if sys.argv[1] == "gateway":
    import fastapi, gateway.app
aes = AES.new(b"k" * 16, AES.MODE_GCM, nonce=b"n" * 12).encrypt(b"x")
argon = hash_secret_raw(b"s", b"saltsalt", 1, 8, 1, 16, Type.ID)
names = ("uvicorn", "cffi", "opentelemetry.sdk.metrics", "pydantic.v1")
print(json.dumps({"absent": [n for n in names if n in sys.modules and sys.modules[n] is None],
                  "loaded": [n for n in names if sys.modules.get(n) is not None], "signed": len(signed)}))
"""


def probe(kind: str, **env: str) -> dict[str, object]:
    path = os.pathsep.join([str(ROOT / "shared"), str(ROOT / "services" / "gateway")])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", PROBE, kind], env={**clean, "PYTHONPATH": path, **env},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_a_worker_imports_its_libraries_without_what_it_never_uses() -> None:
    found = probe("worker")
    assert sorted(found["absent"]) == ["cffi", "opentelemetry.sdk.metrics", "uvicorn"]  # type: ignore[arg-type]
    assert found["loaded"] == [] and found["signed"] == 64


def test_the_gateway_keeps_uvicorn() -> None:
    found = probe("gateway")
    assert "uvicorn" in found["loaded"]  # type: ignore[operator]
    assert sorted(found["absent"]) == ["cffi", "opentelemetry.sdk.metrics", "pydantic.v1"]  # type: ignore[arg-type]


def test_with_tracing_on_the_otel_sdk_stays_importable() -> None:
    # Tracing's gRPC exporter imports the metrics SDK: it is absent only while tracing is off.
    assert "opentelemetry.sdk.metrics" not in optional_imports.unused(worker=True, tracing_on=True)
    found = probe("worker", OTEL_TRACES_EXPORTER="console")
    assert "opentelemetry.sdk.metrics" not in found["absent"]  # type: ignore[operator]


def test_only_a_service_run_as_the_program_skips_anything() -> None:
    # Importing a service's __main__ (scripts/config_reference.py does) marks nothing absent.
    code = ("import sys, storage_service.__main__, gateway.__main__, cffi, uvicorn; "
            "print([n for n in ('cffi', 'uvicorn', 'opentelemetry.sdk.metrics') if sys.modules.get(n, 1) is None])")  # fmt: skip
    path = os.pathsep.join([str(ROOT / "shared"), *(str(p) for p in (ROOT / "services").iterdir())])
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": path},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_collector_runs_again_once_the_configuration_is_loaded() -> None:
    # A service's __main__ pauses it while its modules are imported; entry.load() resumes it.
    code = ("import gc; gc.disable(); from converter_service.__main__ import CONFIG; "
            "from fhirschema_bus.entry import load; load(CONFIG, []); print(gc.isenabled())")  # fmt: skip
    path = os.pathsep.join([str(ROOT / "shared"), str(ROOT / "services" / "converter")])
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": path},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"
