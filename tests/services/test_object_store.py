"""ObjectStore against a real S3 server (SeaweedFS): round-trips, missing objects, S3 down/up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from fhirschema_bus.object_store import ObjectNotFound, ObjectStore, ObjectStoreUnavailable
from fhirschema_bus.servers import RunningServer, start_s3
from fhirschema_bus.settings import S3Settings


def settings_for(srv: RunningServer, prefix: str = "t") -> S3Settings:
    tag = uuid.uuid4().hex[:8]
    return S3Settings(
        endpoint=srv.url.removeprefix("http://"),
        access_key=SecretStr(srv.access_key or ""),
        secret_key=SecretStr(srv.secret_key or ""),
        bucket_schemas=f"{prefix}-schemas-{tag}",
        bucket_packages=f"{prefix}-packages-{tag}",
        bucket_results=f"{prefix}-results-{tag}",
        bucket_payloads=f"{prefix}-payloads-{tag}",
    )


@pytest.fixture
def store(s3_server: RunningServer) -> ObjectStore:
    st = ObjectStore(settings_for(s3_server), attempts=2, wait_min=0.05, wait_max=0.1)
    st.ensure_buckets()
    return st


def test_round_trips(store: ObjectStore) -> None:
    b = store.settings.bucket_schemas
    store.ensure_buckets()  # idempotent
    ref = store.put_json(b, "pkg/1.0/Patient.json", {"url": "http://x/Patient", "n": 1})
    assert ref.bucket == b and ref.key == "pkg/1.0/Patient.json"
    assert store.get_json(b, ref.key) == {"url": "http://x/Patient", "n": 1}
    store.put_bytes(b, "pkg/1.0/raw.bin", b"\x00\x01")
    assert store.get_bytes(b, "pkg/1.0/raw.bin") == b"\x00\x01"
    store.put_bytes(b, "other/x", b"1")
    assert store.list(b, "pkg/") == ["pkg/1.0/Patient.json", "pkg/1.0/raw.bin"]
    assert store.exists(b, "other/x") and not store.exists(b, "other/y")
    store.delete(b, "other/x")
    store.delete(b, "other/x")  # idempotent
    assert not store.exists(b, "other/x")
    with pytest.raises(ObjectNotFound, match="not found"):
        store.get_bytes(b, "nope")
    assert store.ping()


def test_iter_lines_streams_ndjson(store: ObjectStore) -> None:
    b = store.settings.bucket_results
    lines = [f'{{"i": {i}, "pad": "{"x" * 50}"}}'.encode() for i in range(5000)]
    store.put_stream(b, "job.ndjson", (ln + b"\n" for ln in lines))
    got = list(store.iter_lines(b, "job.ndjson", chunk_size=1000))
    assert got == lines


async def test_async_twins(store: ObjectStore) -> None:
    b = store.settings.bucket_payloads
    await store.aput_json(b, "a.json", [1, 2])
    assert await store.aget_json(b, "a.json") == [1, 2]
    assert await store.aexists(b, "a.json")
    assert await store.alist(b) == ["a.json"]
    await store.adelete(b, "a.json")
    assert not await store.aexists(b, "a.json")


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[RunningServer]:
    srv = start_s3(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_s3_down_retries_then_clear_error_then_recovers(own_s3: RunningServer, tmp_path: Path) -> None:
    st = ObjectStore(settings_for(own_s3), attempts=3, wait_min=0.1, wait_max=0.2, timeout=1.0)
    st.ensure_buckets()
    b = st.settings.bucket_schemas
    st.put_json(b, "k.json", {"a": 1})
    port = own_s3.port
    own_s3.stop()
    t0 = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable) as err:
        st.get_json(b, "k.json")
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "unavailable" in msg and "after 3 attempts" in msg and own_s3.url.removeprefix("http://") in msg
    assert 0.2 <= elapsed < 10, elapsed  # it waited between attempts, but not forever
    assert not st.ping()
    # Same data dir and port: the store comes back and the client recovers without a restart.
    again = start_s3(own_s3.data_dir.parent, port=port)
    try:
        assert st.get_json(b, "k.json") == {"a": 1}
    finally:
        again.stop()
