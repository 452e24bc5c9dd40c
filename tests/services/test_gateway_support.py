"""Support for the gateway tests (no tests here): the stack on the session's real servers.

The gateway runs in-process under a real uvicorn on a free port (HTTP and WebSocket); the
validator, converter and storage services run as their own processes (an in-test converter over
the real engine stands in when the converter service is absent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import uvicorn
from nats.aio.client import Client
from nats.js import JetStreamContext

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import ConvertRequest, ConvertResult
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.processes import start_service, stop_process
from fhirschema_bus.servers import RunningServer, free_port
from fhirschema_bus.settings import (
    AuthSettings,
    GatewaySettings,
    NatsSettings,
    PackageSettings,
    RedisSettings,
    S3Settings,
)
from fhirschema_bus.topology import ensure_topology
from tests.conftest import PACKAGES, ROOT

for _svc in ("gateway", "validator", "storage", "ig-ingest"):  # not yet in every editable install
    if str(ROOT / "services" / _svc) not in sys.path:
        sys.path.insert(0, str(ROOT / "services" / _svc))

from gateway.app import create_app  # noqa: E402
from gateway.bootstrap import Settings  # noqa: E402
from gateway.http_server import server_config  # noqa: E402

R4 = PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"
MAX_BODY = 2 * 1024 * 1024
MAX_ITEMS = 500


def settings_for(nats_url: str, s3: RunningServer, redis_url: str, port: int = 0, **gw: Any) -> Settings:
    return Settings(
        gateway=GatewaySettings(
            **{
                "host": "127.0.0.1",
                "port": port,
                "max_body_bytes": MAX_BODY,
                "max_batch_items": MAX_ITEMS,
                **gw,
            }
        ),
        nats=NatsSettings(url=nats_url),
        s3=S3Settings(endpoint=f"127.0.0.1:{s3.port}", access_key=s3.access_key, secret_key=s3.secret_key),
        redis=RedisSettings(url=redis_url),
        auth=AuthSettings(auth="off"),  # the auth tests turn it on (test_gateway_auth.py)
    )


def service_env(st: Settings, repository: bool = False) -> dict[str, str]:
    """`repository`: validators load the packages registered in the repository (the default
    mode, as `make up`), not R4 core from its file."""
    paths = [
        str(ROOT / "services" / n) for n in ("validator", "storage", "converter", "gateway", "ig-ingest")
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "FHIRSCHEMA_NATS_URL": st.nats.url,
        "FHIRSCHEMA_S3_ENDPOINT": st.s3.endpoint,
        "FHIRSCHEMA_S3_ACCESS_KEY": st.s3.access_key.get_secret_value(),
        "FHIRSCHEMA_S3_SECRET_KEY": st.s3.secret_key.get_secret_value(),
        "FHIRSCHEMA_REDIS_URL": st.redis.url,
        "FHIRSCHEMA_VALIDATOR_PACKAGES": str(R4),
        "FHIRSCHEMA_PACKAGES": ",".join(st.packages.package_list()),
        "FHIRSCHEMA_AUTH": st.auth.auth,
    }
    if repository:
        del env["FHIRSCHEMA_VALIDATOR_PACKAGES"]
    return env


async def fake_converter(js: JetStreamContext, nc: Client, jobs: JobStore) -> None:
    """Stands in for the converter service: the real engine behind the shared durable."""
    from fhirschema.converter import convert

    sub = await js.pull_subscribe(
        f"{s.PREFIX}.convert.>", durable=s.DURABLE_CONVERTER, stream=s.STREAM_REQUESTS
    )
    while True:
        try:
            msgs = await sub.fetch(16, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            req = ConvertRequest.model_validate_json(msg.data)
            try:
                result = ConvertResult(
                    job_id=req.job_id, index=req.index, schema=convert(req.structure_definition or {})
                )
            except Exception as e:
                result = ConvertResult(job_id=req.job_id, index=req.index, error=str(e))
            data = result.model_dump_json(by_alias=True, exclude_none=True).encode()
            if req.reply_to:
                await nc.publish(req.reply_to, data)
            await jobs.record(req.job_id, req.index, "failed" if result.error else "valid")
            await msg.ack()


@dataclass
class Stack:
    base_url: str
    ws_url: str
    settings: Settings
    nc: Client
    js: JetStreamContext
    jobs: JobStore
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    app: Any = None  # the in-process gateway (FastAPI), for tests that reach into its container

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=60.0, **kw)


@contextlib.asynccontextmanager
async def gateway_stack(
    nats_server: RunningServer,
    s3_server: RunningServer,
    redis_server: RunningServer,
    logs: Path,
    *,
    validators: int = 1,
    packages: str = "hl7.fhir.r4.core#4.0.1",
    ingest_sources: str | None = None,
    wait: bool = True,
    nats_passwords: dict[str, str] | None = None,
    **gw: Any,
) -> AsyncIterator[Stack]:
    """`gw`: GatewaySettings fields for the in-process gateway. `ingest_sources`: validators in
    repository mode, fed by an ig-ingest service that loads `packages` (FHIRSCHEMA_PACKAGES) from
    these sources (FHIRSCHEMA_PACKAGE_SOURCES); else each validator loads R4 core from its file.
    `wait`: return once /ready says ready (and a first validation answered). `nats_passwords`:
    each service connects as its own NATS user (nats_permissions.py), the test as `admin`."""
    port = free_port()
    st = settings_for(nats_server.url, s3_server, redis_server.url, port, **gw)
    st.packages = PackageSettings(packages=packages, package_sources=ingest_sources or "")
    users = nats_passwords or {}
    admin = {"user": "admin", "password": users["admin"]} if users else {}
    nc = await nats.connect(st.nats.url, **admin)
    js = nc.jetstream()
    await ensure_topology(js, st.nats)
    jobs = await JobStore.open(js)
    env = service_env(st, repository=ingest_sources is not None)

    def as_user(service: str, base: dict[str, str]) -> dict[str, str]:
        if not users:
            return base
        return {**base, "FHIRSCHEMA_NATS_USER": service, "FHIRSCHEMA_NATS_PASSWORD": users[service]}

    procs = {"storage": start_service("storage_service", as_user("storage", env), logs / "storage.log")}
    for n in range(validators):
        name = "validator" if n == 0 else f"validator-{n}"
        procs[name] = start_service("validator_service", as_user("validator", env), logs / f"{name}.log")
    if ingest_sources is not None:
        ingest_env = {**env, "FHIRSCHEMA_PACKAGE_SOURCES": ingest_sources}
        procs["ig-ingest"] = start_service(
            "ig_ingest", as_user("ig-ingest", ingest_env), logs / "ig-ingest.log"
        )
    if (ROOT / "services" / "converter" / "converter_service" / "__main__.py").is_file():
        procs["converter"] = start_service(
            "converter_service", as_user("converter", env), logs / "converter.log"
        )
        converter = None
    else:  # until the converter service exists: the real engine behind the shared durable
        converter = asyncio.create_task(fake_converter(js, nc, jobs))
    if users:
        st.nats = NatsSettings(url=st.nats.url, user="gateway", password=users["gateway"])
    app = create_app(st)
    try:
        async with serving(app, port):
            stack = Stack(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", st, nc, js, jobs, procs, app)
            if wait:
                async with stack.client() as client:  # ready once a validator has loaded R4 core
                    await wait_ready(client, logs / "validator.log")
                    r = await client.post("/validate", json={"resourceType": "Patient"})
                    assert r.status_code == 200, (
                        r.status_code,
                        r.text,
                        (logs / "validator.log").read_text()[-3000:],
                    )
                    # /ready does not ask storage, and a validator reading R4 core from its
                    # cache can be ready before storage has started: wait for it too.
                    await wait_storage(client, logs / "storage.log")
            yield stack
    finally:
        if converter is not None:
            converter.cancel()
            with contextlib.suppress(BaseException):
                await converter
        for proc in procs.values():
            stop_process(proc)
        await nc.close()


@contextlib.asynccontextmanager
async def serving(app: Any, port: int | None = None, max_header_bytes: int = 64 * 1024) -> AsyncIterator[int]:
    """`app` under a real uvicorn (HTTP and WebSocket) configured as the gateway runs it (headers
    bounded: gateway/http_server.py) on `port` (default: a free one), until the block ends;
    yields the port."""
    port = port or free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, max_header_bytes, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # it could not start: say why
            await asyncio.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        await task


async def wait_ready(client: httpx.AsyncClient, log: Path | None = None, timeout: float = 180.0) -> float:
    """Poll GET /ready until 200; the seconds it took."""
    t0 = asyncio.get_running_loop().time()
    while True:
        r = await client.get("/ready")
        if r.status_code == 200:
            return asyncio.get_running_loop().time() - t0
        if asyncio.get_running_loop().time() - t0 > timeout:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"not ready within {timeout:g}s: {r.text}\n{tail}")
        await asyncio.sleep(0.1)


async def wait_storage(client: httpx.AsyncClient, log: Path, timeout: float = 120.0) -> None:
    """Poll GET /schemas (a storage request) until storage answers."""
    t0 = asyncio.get_running_loop().time()
    while (r := await client.get("/schemas", params={"limit": "1"})).status_code == 503:
        if asyncio.get_running_loop().time() - t0 > timeout:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise AssertionError(f"storage did not answer within {timeout:g}s: {r.text}\n{tail}")
        await asyncio.sleep(0.1)


def outcome_issues(body: bytes) -> list[dict[str, Any]]:
    return orjson.loads(body).get("issue", [])
