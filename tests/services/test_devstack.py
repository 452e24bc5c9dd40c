"""`make up` end to end: the dev stack starts servers and services, serves the gateway, ingests a
small package from a local directory, and SIGTERM stops everything within 5 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fhirschema_bus.servers import _pid_alive, free_port
from tests.conftest import PACKAGES

pytestmark = [pytest.mark.slow, pytest.mark.servers]


def test_devstack_up_and_down(tmp_path: Path) -> None:
    gw_port = free_port()
    env = {
        **os.environ,
        "FHIRSCHEMA_DEVSTACK_DIR": str(tmp_path / "stack"),
        "FHIRSCHEMA_DEVSTACK_NATS_PORT": "0",
        "FHIRSCHEMA_DEVSTACK_S3_PORT": "0",
        "FHIRSCHEMA_DEVSTACK_REDIS_PORT": "0",
        "FHIRSCHEMA_GATEWAY_PORT": str(gw_port),
        "FHIRSCHEMA_PACKAGE_SOURCES": str(PACKAGES),
        "FHIRSCHEMA_PACKAGES": "hl7.fhir.us.core#3.1.1",
    }
    out = tmp_path / "devstack.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhirschema_bus.devstack"], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Ctrl-C stops" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            time.sleep(0.2)
        text = out.read_text()
        assert f"http://127.0.0.1:{gw_port}" in text, text
        with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/health", timeout=5) as r:
            assert r.status == 200
        state = json.loads((tmp_path / "stack" / "state.json").read_text())
        pids = [*state["servers"].values(), *state["services"].values()]
        assert {"storage", "ig-ingest", "gateway"} <= set(state["services"])
    finally:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
    text = out.read_text()
    assert elapsed < 5.0, (elapsed, text[-2000:])
    assert "stopped everything" in text
    assert not [p for p in pids if _pid_alive(p)], text[-2000:]
