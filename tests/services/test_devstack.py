"""`make up` end to end: the dev stack starts servers and services, serves the gateway, ingests a
small package from a local directory; the first SIGTERM/SIGINT stops everything within 5 s, at
any moment, and nothing it started outlives it, even when it is killed (issue 9 §5)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fhirschema_bus.processes import _pid_alive, kill_marked, processes_marked
from fhirschema_bus.servers import free_port
from tests.conftest import PACKAGES, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.servers]
CORE = "hl7.fhir.r4.core#4.0.1"
TAG = "FHIRSCHEMA_TEST_DEVSTACK"  # inherited by the supervisor and everything it starts


class Devstack:
    def __init__(self, tmp_path: Path, **overrides: str) -> None:
        self.tag = uuid.uuid4().hex
        self.gw_port = free_port()
        self.dir = tmp_path / "stack"
        self.out = tmp_path / "devstack.out"
        env = {
            **os.environ,
            TAG: self.tag,
            "FHIRSCHEMA_DEVSTACK_DIR": str(self.dir),
            "FHIRSCHEMA_DEVSTACK_NATS_PORT": "0",
            "FHIRSCHEMA_DEVSTACK_S3_PORT": "0",
            "FHIRSCHEMA_DEVSTACK_REDIS_PORT": "0",
            "FHIRSCHEMA_GATEWAY_PORT": str(self.gw_port),
            "FHIRSCHEMA_PACKAGE_SOURCES": str(PACKAGES),
            "FHIRSCHEMA_PACKAGES": "hl7.fhir.us.core#3.1.1",
            **overrides,
        }
        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fhirschema_bus.devstack"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def text(self) -> str:
        return self.out.read_text()

    def wait_for(self, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"no {what!r} in {timeout:.0f}s:\n{self.text()}"
            time.sleep(0.1)

    def left(self) -> list[int]:
        """Processes of this stack still alive: marked ones, and the PIDs in its state file
        (valkey-server rewrites its environment, so no mark can find it)."""
        pids = set(processes_marked(TAG, self.tag))
        state = self.dir / "state.json"
        if state.is_file():
            data = json.loads(state.read_text())
            pids |= {p for p in [*data["servers"].values(), *data["services"].values()] if _pid_alive(p)}
        return sorted(pids - {self.proc.pid})

    def wait_nothing_left(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while (left := self.left()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def stop(self, *signals: signal.Signals) -> float:
        t0 = time.monotonic()
        for sig in signals:
            self.proc.send_signal(sig)
            time.sleep(0.05)
        self.proc.wait(timeout=30)
        return time.monotonic() - t0


def read_when_up(url: str, timeout: float = 60.0) -> str:
    """A worker's endpoint starts once it is connected and its start-up hooks ran."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            assert time.monotonic() < deadline, f"{url} does not answer"
            time.sleep(0.2)


@pytest.fixture
def start_devstack(tmp_path: Path) -> Iterator[Callable[..., Devstack]]:
    """Starts `make up` with these environment overrides (each stack in a folder of its own)."""
    stacks: list[Devstack] = []

    def start(**overrides: str) -> Devstack:
        folder = tmp_path / f"run{len(stacks)}"
        folder.mkdir()
        stacks.append(Devstack(folder, **overrides))
        return stacks[-1]

    try:
        yield start
    finally:  # whatever a failed test left behind
        for stack in stacks:
            if stack.proc.poll() is None:
                stack.proc.kill()
                stack.proc.wait()
            kill_marked(TAG, stack.tag)


@pytest.fixture
def devstack(start_devstack: Callable[..., Devstack]) -> Devstack:
    return start_devstack()


def test_devstack_up_and_down(devstack: Devstack) -> None:
    devstack.wait_for("Ctrl-C stops")
    assert f"http://127.0.0.1:{devstack.gw_port}" in devstack.text()
    devstack.wait_for("auth      OFF")  # make up says that anyone may call the gateway
    with urllib.request.urlopen(f"http://127.0.0.1:{devstack.gw_port}/health", timeout=5) as r:
        assert r.status == 200
    state = json.loads((devstack.dir / "state.json").read_text())
    assert {"storage", "ig-ingest", "gateway"} <= set(state["services"])
    # Every service's metrics port is on the console and answers with its build info.
    assert set(state["metrics"]) == set(state["services"])
    for name, url in state["metrics"].items():
        assert f"metrics {url}" in devstack.text(), name
        assert "fhirschema_build_info{" in read_when_up(url), name
    assert len(devstack.left()) >= 8  # 3 servers, 5 services, the guard
    # A second and a third signal while stopping (the old supervisor crashed on those).
    elapsed = devstack.stop(signal.SIGTERM, signal.SIGINT, signal.SIGTERM)
    assert elapsed < 5.0, (elapsed, devstack.text()[-2000:])
    assert "stopped everything" in devstack.text() and devstack.proc.returncode == 0
    assert devstack.wait_nothing_left(2.0) == [], devstack.text()[-2000:]


@pytest.mark.parametrize("moment", ["servers starting", "services starting"])
def test_devstack_stops_while_starting(devstack: Devstack, moment: str) -> None:
    deadline = time.monotonic() + 60
    if moment == "servers starting":  # SeaweedFS takes the longest: its folder comes first
        while not (devstack.dir / "s3").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        devstack.wait_for("storage   started")
    elapsed = devstack.stop(signal.SIGINT)
    assert elapsed < 5.0, (elapsed, devstack.text()[-2000:])
    assert devstack.wait_nothing_left(2.0) == [], devstack.text()[-2000:]


def test_nothing_outlives_a_killed_supervisor(devstack: Devstack) -> None:
    devstack.wait_for("gateway   started")
    assert len(devstack.left()) >= 8
    devstack.proc.kill()  # no chance to clean up: the guard does it
    devstack.proc.wait()
    assert devstack.wait_nothing_left(15.0) == [], devstack.text()[-2000:]


def test_smoke_script_passes_on_a_fresh_stack(start_devstack: Callable[..., Devstack]) -> None:
    """scripts/smoke.py, started with `make up` (R4 core from the shared folder): every point of
    issue 9's "done when", the first request right after /ready, ending with the SIGTERM."""
    stack = start_devstack(FHIRSCHEMA_PACKAGES=CORE)
    smoke = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke.py"), f"http://127.0.0.1:{stack.gw_port}",
         "--stack-dir", str(stack.dir), "--ready-timeout", "240"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    report = smoke.stdout + smoke.stderr
    print(report)
    assert smoke.returncode == 0, report + "\n" + stack.text()[-3000:]
    assert "8 of 8 checks passed" in report and "FAIL" not in report, report
    stack.proc.wait(timeout=10)
    assert "ready to validate after" in stack.text() and "stopped everything" in stack.text()
    assert stack.wait_nothing_left(1.0) == []


@pytest.mark.parametrize(
    "source", ["an empty folder", "an unreachable registry", "an empty folder, auth required"]
)
def test_a_failed_startup_ingest_is_loud_on_the_console(
    start_devstack: Callable[..., Devstack], tmp_path: Path, source: str
) -> None:
    """No R4 core to be had: `make up` prints an ERROR naming the package and saying to set
    FHIRSCHEMA_PACKAGE_SOURCES, and never "ready to validate" — also with FHIRSCHEMA_AUTH=required
    (it read /info, which then needs a key: the console said nothing at all)."""
    empty = tmp_path / "no-packages"
    empty.mkdir()
    where = f"http://127.0.0.1:{free_port()}" if source == "an unreachable registry" else str(empty)
    auth: dict[str, str] = {}
    if "auth required" in source:
        keys = tmp_path / "api-keys"
        keys.write_text(f"{hashlib.sha256(b'a-key').hexdigest()} validate someone\n")
        auth = {"FHIRSCHEMA_AUTH": "required", "FHIRSCHEMA_API_KEYS_FILE": str(keys)}
    stack = start_devstack(FHIRSCHEMA_PACKAGES=CORE, FHIRSCHEMA_PACKAGE_SOURCES=where, **auth)
    stack.wait_for(f"ERROR: {CORE} could not be ingested", timeout=120)
    line = next(ln for ln in stack.text().splitlines() if f"ERROR: {CORE}" in ln)
    assert where in line or "not found" in line, line
    assert "FHIRSCHEMA_PACKAGE_SOURCES=../shared/fhir/packages" in stack.text()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{stack.gw_port}/ready", timeout=5)
        raise AssertionError("/ready is 200 without R4 core")
    except urllib.error.HTTPError as e:
        assert e.code == 503
        assert CORE in json.loads(e.read())["checks"]["validators"]["ingest_failures"]
    assert "ready to validate after" not in stack.text()
    assert stack.stop(signal.SIGTERM) < 5.0
