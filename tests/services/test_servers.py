"""The real servers behind the service tests: each speaks its protocol, and stops cleanly."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis
from minio import Minio
from nats.js.api import StreamConfig

from fhirschema_bus.servers import (
    HOST,
    RunningServer,
    ServerStartError,
    local_stack,
    port_is_free,
    start_redis,
)

pytestmark = pytest.mark.servers


def _uid() -> str:
    # Unique names: the session servers are shared with every other service test.
    return uuid.uuid4().hex[:10]


async def test_nats_jetstream_stream_pull_and_kv(nats_server: RunningServer) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=2)
    try:
        js = nc.jetstream()
        name = f"T{_uid()}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
        for i in range(3):
            ack = await js.publish(f"{name}.x", f"m{i}".encode(), headers={"Nats-Msg-Id": f"id{i}"})
            assert ack.stream == name
        dup = await js.publish(f"{name}.x", b"m0", headers={"Nats-Msg-Id": "id0"})
        assert dup.duplicate  # JetStream deduplication, which the services rely on

        sub = await js.pull_subscribe(f"{name}.>", durable="worker")
        msgs = await sub.fetch(3, timeout=2)
        assert [m.data for m in msgs] == [b"m0", b"m1", b"m2"]
        for m in msgs:
            await m.ack()

        kv = await js.create_key_value(bucket=f"kv{_uid()}")
        await kv.put("job.1", b'{"state": "queued"}')
        assert (await kv.get("job.1")).value == b'{"state": "queued"}'
        await js.delete_stream(name)
    finally:
        await nc.close()


def test_s3_bucket_and_object_roundtrip(s3_server: RunningServer) -> None:
    client = Minio(f"{HOST}:{s3_server.port}", s3_server.access_key, s3_server.secret_key, secure=False)
    bucket = f"t-{_uid()}"
    client.make_bucket(bucket)
    assert bucket in {b.name for b in client.list_buckets()}
    body = b'{"resourceType": "Patient"}\n' * 1000
    client.put_object(bucket, "a/b.ndjson", io.BytesIO(body), len(body))
    resp = client.get_object(bucket, "a/b.ndjson")
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()
    client.remove_object(bucket, "a/b.ndjson")
    client.remove_bucket(bucket)
    assert bucket not in {b.name for b in client.list_buckets()}


def test_s3_rejects_wrong_credentials(s3_server: RunningServer) -> None:
    from minio.error import S3Error

    with pytest.raises(S3Error):
        Minio(f"{HOST}:{s3_server.port}", "nobody", "wrong-secret", secure=False).list_buckets()


async def test_redis_set_get(redis_server: RunningServer) -> None:
    r = aioredis.from_url(redis_server.url)
    try:
        key = f"k{_uid()}"
        await r.set(key, "v", ex=30)
        assert await r.get(key) == b"v"
    finally:
        await r.aclose()


@pytest.mark.parametrize("persistent", [True, False])
async def test_redis_killed_keeps_its_data_only_when_persistent(tmp_path: Path, persistent: bool) -> None:
    """`make up` runs Valkey with an append-only file: SIGKILL and restart keep the index; the
    test servers keep nothing (a restart is the empty Redis the storage service must survive)."""
    srv = start_redis(tmp_path, persistent=persistent)
    try:
        r = aioredis.from_url(srv.url)
        await r.set("kept", "v")
        await r.aclose()
        time.sleep(1.5)  # appendfsync everysec
        srv.kill()
        srv.restart()
        r = aioredis.from_url(srv.url)
        assert (await r.get("kept")) == (b"v" if persistent else None)
        await r.aclose()
    finally:
        srv.stop()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _procs_mentioning(text: str) -> list[int]:
    # Any process (child or grandchild) whose command line names our data dir.
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def test_stop_by_pid_leaves_nothing_behind(tmp_path: Path) -> None:
    srv = start_redis(tmp_path)
    assert srv.alive() and not port_is_free(srv.port)
    srv.stop()
    assert _gone(srv.pid) and port_is_free(srv.port)
    srv.stop()  # idempotent


def test_stop_by_pid_alone(tmp_path: Path) -> None:
    # The dev stack may only know a PID (no Popen handle): stop must still work and reap.
    srv = start_redis(tmp_path)
    by_pid = RunningServer("redis", srv.pid, srv.url, srv.ports, srv.data_dir, srv.log_path)
    assert by_pid.alive()
    t0 = time.monotonic()
    by_pid.stop()
    assert time.monotonic() - t0 < 3 and not by_pid.alive() and not srv.alive()
    assert not _procs_mentioning(str(tmp_path))


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    # A process that ignores SIGTERM must still be gone after stop().
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    srv = RunningServer("stubborn", proc.pid, "", {}, tmp_path, tmp_path / "x.log", proc=proc)
    t0 = time.monotonic()
    srv.stop(timeout=0.3)
    assert proc.returncode == -9 and time.monotonic() - t0 < 3
    assert _gone(proc.pid)


def test_busy_port_is_refused_before_launch(tmp_path: Path) -> None:
    # Otherwise a server already on the port could answer the readiness probe.
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        with pytest.raises(ServerStartError, match="already in use"):
            start_redis(tmp_path, port=busy.getsockname()[1])


def test_start_failure_shows_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-redis"
    fake.write_text("#!/bin/sh\necho 'FATAL: bad config line 7'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("REDIS_SERVER_BIN", str(fake))
    with pytest.raises(ServerStartError) as err:
        start_redis(tmp_path)
    msg = str(err.value)
    assert "exited with code 3" in msg and "FATAL: bad config line 7" in msg and str(fake) in msg


@pytest.mark.slow
def test_local_stack_starts_and_stops_all(tmp_path: Path) -> None:
    with local_stack(tmp_path) as servers:
        assert set(servers) == {"nats", "s3", "redis"}
        assert all(s.alive() for s in servers.values())
        assert _procs_mentioning(str(tmp_path))
    assert all(_gone(s.pid) for s in servers.values())
    assert not _procs_mentioning(str(tmp_path))
    for srv in servers.values():
        assert all(port_is_free(p) for p in srv.ports.values()), srv.name
        assert not any(p.exists() for p in srv.cleanup), srv.name
