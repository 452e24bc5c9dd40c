"""`make up`: the whole stack on loopback — NATS, S3, Redis and every service as its own process.

Ports (env): FHIRSCHEMA_DEVSTACK_NATS_PORT (4222), FHIRSCHEMA_DEVSTACK_S3_PORT (8333),
FHIRSCHEMA_DEVSTACK_REDIS_PORT (6379), FHIRSCHEMA_GATEWAY_PORT (8080); a busy port falls back to a
free one (said on the console); 0 means "any free port". Data and logs under FHIRSCHEMA_DEVSTACK_DIR
(default .devstack/). The first Ctrl-C or SIGTERM stops everything (process groups) within 5 s;
every child carries FHIRSCHEMA_DEVSTACK_RUN in its environment, and a guard process stops them
all if the supervisor itself dies (even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from fhirschema_bus import nats_permissions, processes
from fhirschema_bus import servers as srv
from fhirschema_bus.startup_watch import StartupWatch, get_json

SERVICES = [  # (name, module run with `python -m`)
    ("storage", "storage_service"),
    ("converter", "converter_service"),
    ("validator", "validator_service"),
    ("ig-ingest", "ig_ingest"),
    ("gateway", "gateway"),
]
STOP_GRACE = 2.5  # SIGTERM -> SIGKILL for services; servers, the sweep and the guard get the rest of the 5 s
RUN_VAR = "FHIRSCHEMA_DEVSTACK_RUN"  # in every child's environment: how a run's processes are found


def say(msg: str) -> None:
    print(f"[devstack] {msg}", flush=True)


def pick_port(name: str, env: str, default: int) -> int | None:
    """The port asked for, or None when any free one will do (the asked one is busy, or 0): the
    server then picks its own and retries with fresh ones if another process takes it first."""
    wanted = int(os.environ.get(env, default))
    if wanted and srv.port_is_free(wanted):
        return wanted
    if wanted:
        say(f"{name}: port {wanted} is busy, using a free one instead (set {env} to choose)")
    return None


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # the whole group: children of the service too


class Stopping:
    """The first SIGTERM/SIGINT, noted by the handler and acted on by the main loop: the handler
    only sets a flag, so no exception ever lands in the middle of starting or stopping."""

    def __init__(self) -> None:
        self.signal = ""

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.signal = self.signal or signal.Signals(signum).name

    def check(self) -> None:
        if self.signal:
            raise _Stop(self.signal)


@dataclass
class Stack:
    base: Path
    stopping: Stopping = field(default_factory=Stopping)
    servers: dict[str, srv.RunningServer] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    nats_passwords: dict[str, str] = field(default_factory=dict)  # per-run, one user per service
    # Ports handed to children: a port is only free until someone binds it, and the OS may hand a
    # just-released one out again — a worker once took the gateway's port (the gateway then failed).
    ports: set[int] = field(default_factory=set)
    gateway_url: str = ""
    metrics: dict[str, str] = field(default_factory=dict)  # service -> its /metrics URL
    guard: subprocess.Popen[bytes] | None = None

    def watch(self, pid: int) -> None:
        """Tell the guard about a child (a process group of its own): found even when it
        rewrites its environment, as valkey-server does (its process title)."""
        if self.guard is not None and self.guard.stdin is not None:
            with contextlib.suppress(OSError):
                self.guard.stdin.write(f"{pid}\n".encode())
                self.guard.stdin.flush()

    def start_servers(self) -> None:
        ports = {
            "nats": pick_port("NATS", "FHIRSCHEMA_DEVSTACK_NATS_PORT", 4222),
            "s3": pick_port("S3", "FHIRSCHEMA_DEVSTACK_S3_PORT", 8333),
            "redis": pick_port("Redis", "FHIRSCHEMA_DEVSTACK_REDIS_PORT", 6379),
        }
        starters: dict[str, Callable[..., srv.RunningServer]] = {
            "nats": functools.partial(srv.start_nats, config=self.nats_config()), "s3": srv.start_s3,
            # Redis' index is rebuilt from S3 when lost; kept across restarts, no rebuild needed.
            "redis": functools.partial(srv.start_redis, persistent=True),
        }  # fmt: skip
        pool = ThreadPoolExecutor(3)
        futures = {k: pool.submit(f, self.base, port=ports[k]) for k, f in starters.items()}
        try:
            while not all(f.done() for f in futures.values()):
                self.stopping.check()
                time.sleep(0.05)
        finally:
            if self.stopping.signal:
                processes.ABORT.set()  # a start in flight gives up within 50 ms, no retry
            pool.shutdown(wait=True)
            for k, fut in futures.items():  # also when stopping: stop() stops what did start
                if fut.exception() is None:
                    self.servers[k] = fut.result()
                    self.watch(self.servers[k].pid)
            self.write_state()
        errors = []
        for k, fut in futures.items():
            if (error := fut.exception()) is not None:
                errors.append(f"{k}: {error}")
            else:
                say(
                    f"{k:9} {self.servers[k].url}  (pid {self.servers[k].pid}, log {self.servers[k].log_path})"
                )
        if errors:
            raise srv.ServerStartError("\n".join(errors))

    def nats_config(self) -> Path:
        """Each service its own NATS user with the permissions Kubernetes uses (fresh passwords
        each run; `admin`'s in .devstack/nats-admin-password, for the nats CLI)."""
        self.nats_passwords = {u: secrets.token_urlsafe(24) for u in (*nats_permissions.SERVICES, "admin")}
        conf = self.base / "nats-auth.conf"
        for path, text in ((conf, nats_permissions.config(self.nats_passwords)),
                           (self.base / "nats-admin-password", self.nats_passwords["admin"] + "\n")):  # fmt: skip
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(text)
        say(f"NATS: a user per service with its subject permissions ({conf}); admin password in "
            f"{self.base / 'nats-admin-password'}")  # fmt: skip
        return conf

    def nats_env(self, service: str) -> dict[str, str]:
        if service not in self.nats_passwords:
            return {}
        return {"FHIRSCHEMA_NATS_USER": service, "FHIRSCHEMA_NATS_PASSWORD": self.nats_passwords[service]}

    def service_env(self) -> dict[str, str]:
        gw_port = pick_port("gateway", "FHIRSCHEMA_GATEWAY_PORT", 8080) or self.fresh_port()
        self.ports.add(gw_port)
        self.gateway_url = f"http://{srv.HOST}:{gw_port}"
        s3 = self.servers["s3"]
        env = {
            **os.environ,
            "FHIRSCHEMA_NATS_URL": self.servers["nats"].url,
            "FHIRSCHEMA_S3_ENDPOINT": s3.url.removeprefix("http://"),
            "FHIRSCHEMA_S3_ACCESS_KEY": s3.access_key or srv.S3_ACCESS_KEY,
            "FHIRSCHEMA_S3_SECRET_KEY": s3.secret_key or srv.S3_SECRET_KEY,
            "FHIRSCHEMA_REDIS_URL": self.servers["redis"].url,
            "FHIRSCHEMA_GATEWAY_HOST": srv.HOST,
            "FHIRSCHEMA_GATEWAY_PORT": str(gw_port),
            # A development stack on this machine: no keys to manage (said on the console).
            "FHIRSCHEMA_AUTH": os.environ.get("FHIRSCHEMA_AUTH", "off"),
            "PYTHONUNBUFFERED": "1",
        }
        # Unpacked package tarballs kept with the stack's data: a restart does not unpack R4 core again.
        env.setdefault("FHIRSCHEMA_VALIDATOR_CACHE_DIR", str(self.base / "validator-cache"))
        # Logs go to files a person reads (tail -f): text, unless the environment says otherwise.
        env.setdefault("FHIRSCHEMA_LOG_FORMAT", "text")
        return env

    def fresh_port(self) -> int:
        while (port := srv.free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    def start_services(self) -> None:
        self.env = self.service_env()
        logs = self.base / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name, module in SERVICES:
            self.stopping.check()  # a stop asked for while starting: start nothing more
            if not _runnable(module):
                say(f"{name:9} MISSING: module {module} (or its __main__) is not importable; not started")
                continue
            log = logs / f"{name}.log"
            env = self.env
            if name == "gateway":  # its API port serves /metrics too
                self.metrics[name] = f"{self.gateway_url}/metrics"
            else:  # each worker its own /health, /ready, /metrics port (probes.py)
                port = self.fresh_port()
                env = {
                    **self.env,
                    "FHIRSCHEMA_WORKER_HTTP_HOST": srv.HOST,
                    "FHIRSCHEMA_WORKER_HTTP_PORT": str(port),
                }
                self.metrics[name] = f"http://{srv.HOST}:{port}/metrics"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env={**env, **self.nats_env(name)}, start_new_session=True,
                )  # fmt: skip
            self.children.append(Child(name, proc, log))
            self.watch(proc.pid)
            say(f"{name:9} started (pid {proc.pid}, log {log}, metrics {self.metrics[name]})")
        self.write_state()

    def write_state(self) -> None:
        state = {
            "run": os.environ.get(RUN_VAR),
            "supervisor": os.getpid(),  # what scripts/smoke.py sends its SIGTERM to
            "servers": {k: s.pid for k, s in self.servers.items()},
            "services": {c.name: c.proc.pid for c in self.children},
            "gateway": self.gateway_url,
            "metrics": self.metrics,
        }
        (self.base / "state.json").write_text(json.dumps(state, indent=2))

    def wait_gateway(self, timeout: float = 60.0) -> bool:
        gw = next((c for c in self.children if c.name == "gateway"), None)
        if gw is None:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stopping.check()
            if gw.proc.poll() is not None:
                say(f"gateway exited with code {gw.proc.returncode}; log tail:\n{srv._tail(gw.log, 20)}")
                return False
            with (
                contextlib.suppress(Exception),
                urllib.request.urlopen(f"{self.gateway_url}/health", timeout=1) as r,
            ):
                if r.status == 200:
                    return True
            time.sleep(0.2)
        say(f"gateway did not answer /health within {timeout:.0f}s (log {gw.log})")
        return False

    def watch_readiness(self) -> None:
        """In a thread: say when the stack can validate, and loudly when a start-up ingest fails
        (the gateway's /ready: open, also with FHIRSCHEMA_AUTH=required), until stopping."""
        watch = StartupWatch(time.monotonic())
        while not self.stopping.signal:
            with contextlib.suppress(Exception):
                for line in watch.lines(get_json(f"{self.gateway_url}/ready"), time.monotonic()):
                    say(line)
            time.sleep(1.0)

    def check_children(self, reported: set[str]) -> None:
        for c in self.children:
            if c.proc.poll() is not None and c.name not in reported:
                reported.add(c.name)
                say(f"{c.name} exited with code {c.proc.returncode}; log tail:\n{srv._tail(c.log, 15)}")

    def stop(self) -> None:
        t0 = time.monotonic()
        processes.ABORT.set()  # nothing new starts from here on
        for c in self.children:
            c.stop_signal(signal.SIGTERM)
        deadline = t0 + STOP_GRACE
        for c in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for c in self.children:
            if c.proc.poll() is None:
                say(f"{c.name} did not stop in {STOP_GRACE:g}s: killed")
            c.stop_signal(signal.SIGKILL)  # also any grandchild left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=1.0)
        with ThreadPoolExecutor(max(1, len(self.servers))) as pool:
            list(pool.map(lambda s: s.stop(timeout=1.0), self.servers.values()))
        # Whatever else this run started (a server caught mid-start, a service's own children).
        if left := processes.kill_marked(RUN_VAR, run_id(), grace=0.5):
            say(f"stopped {len(left)} more process(es) of this run: {left}")
        say(f"stopped everything in {time.monotonic() - t0:.1f}s")


def _runnable(module: str) -> bool:
    """Has `module` a __main__? Found without importing the package (a service's package imports
    the engine and its clients: seconds of the supervisor's time on a busy machine)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and any((Path(loc) / "__main__.py").is_file() for loc in locations or ())


def auth_line(env: dict[str, str]) -> str:
    """What the console says about who may call the gateway."""
    if env.get("FHIRSCHEMA_AUTH") == "off":
        return ("auth      OFF: anyone on this machine may call every route (FHIRSCHEMA_AUTH=required "
                "with FHIRSCHEMA_API_KEYS_FILE turns it on)")  # fmt: skip
    return f"auth      required: API keys from {env.get('FHIRSCHEMA_API_KEYS_FILE', '(none set)')}"


class _Stop(Exception):
    pass


def run_id() -> str:
    return os.environ[RUN_VAR]


def start_guard() -> subprocess.Popen[bytes]:
    """A watchdog that outlives us: it waits for EOF on its stdin (our end of the pipe closes
    when we exit, however we die, SIGKILL included), then stops every process of this run."""
    env = {k: v for k, v in os.environ.items() if k != RUN_VAR}  # not itself one of them
    return subprocess.Popen(
        [sys.executable, "-m", "fhirschema_bus.devstack", "--guard", run_id()], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip


def guard(run: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the pipe ends the watch
    groups = {int(line) for line in sys.stdin.buffer if line.strip().isdigit()}  # until EOF
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:  # each child leads its own process group (start_new_session)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        processes.kill_marked(RUN_VAR, run, grace=0.5)
    return 0


def main() -> int:
    base = Path(os.environ.get("FHIRSCHEMA_DEVSTACK_DIR", ".devstack")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_VAR] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # inherited by every child
    stack = Stack(base)
    signal.signal(signal.SIGTERM, stack.stopping.handler)
    signal.signal(signal.SIGINT, stack.stopping.handler)
    watchdog = stack.guard = start_guard()
    code = 0
    try:
        stack.start_servers()
        stack.stopping.check()
        stack.start_services()
        say(f"package sources: {os.environ.get('FHIRSCHEMA_PACKAGE_SOURCES', '(default registries)')}")
        if stack.wait_gateway():
            say(f"gateway   {stack.gateway_url}  (docs {stack.gateway_url}/docs) — Ctrl-C stops everything")
            say(auth_line(stack.env))
            threading.Thread(target=stack.watch_readiness, name="readiness", daemon=True).start()
        reported: set[str] = set()
        while True:
            stack.stopping.check()
            stack.check_children(reported)
            time.sleep(0.1)
    except _Stop as e:
        say(f"{e}: stopping")
    except srv.ServerStartError as e:
        say(f"could not start: {e}")
        code = 1
    finally:
        stack.stop()
        if watchdog.stdin is not None:
            watchdog.stdin.close()  # the guard finds nothing left, and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=2.0)
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--guard"]:
        sys.exit(guard(sys.argv[2]))
    status = main()
    sys.stdout.flush()
    # Everything is stopped: skip the interpreter's teardown, which took 1-4 s of CPU on a busy
    # machine (measured: the stop itself 1.5 s, the exit 6 s after the SIGTERM).
    os._exit(status)
