"""NATS users, permissions and TLS on a real nats-server (nats_permissions.py, credentials.py).

The stack test runs every service as its own NATS user with the generated permissions (as
`make up` and Kubernetes do) and does each service's job through the gateway; the server logs
no permissions violation. Then a service publishing, subscribing or pulling outside its
permissions is refused, and anonymous or wrong credentials are not let in.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from fhirschema_bus import nats_permissions as perms
from fhirschema_bus import subjects as s
from fhirschema_bus.credentials import nats_options
from fhirschema_bus.processes import find_binary
from fhirschema_bus.servers import RunningServer, start_nats
from fhirschema_bus.settings import NatsSettings
from fhirschema_bus.topology import DURABLES, ensure_topology
from tests.conftest import PACKAGES
from tests.services.ig_support import process
from tests.services.test_gateway import BAD_PATIENT, PATIENT, sd_from_core, wait_final
from tests.services.test_gateway_support import Stack, gateway_stack, wait_ready

pytestmark = pytest.mark.slow
PASSWORDS = {u: secrets.token_urlsafe(12) for u in (*perms.SERVICES, perms.ADMIN)}


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """This module's NATS: with the generated users and permissions (the conftest's is open)."""
    base = tmp_path_factory.mktemp("nats-auth")
    conf = base / "auth.conf"
    conf.write_text(perms.config(PASSWORDS))
    srv = start_nats(base, config=conf)
    yield srv
    srv.stop()


async def connect(srv: RunningServer, user: str, errors: list[str] | None = None, **kw: Any) -> Client:
    async def on_error(e: Exception) -> None:
        if errors is not None:
            errors.append(str(e))

    settings = NatsSettings(url=srv.url, user=user, password=PASSWORDS[user])
    return await nats.connect(
        srv.url, error_cb=on_error, max_reconnect_attempts=0, **nats_options(settings), **kw
    )


@pytest.fixture(scope="module")
async def stack(nats_server, s3_server, redis_server, tmp_path_factory) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("nats-auth-stack")
    async with gateway_stack(
        nats_server, s3_server, redis_server, logs, ingest_sources=str(PACKAGES), wait=False,
        nats_passwords=PASSWORDS,
    ) as st:  # fmt: skip
        async with st.client() as client:
            await wait_ready(client, logs / "validator.log", timeout=300)
        yield st


async def test_every_service_does_its_job_as_its_own_user(stack: Stack, nats_server: RunningServer) -> None:
    async with stack.client() as client:
        r = await client.post("/validate", json=BAD_PATIENT)  # gateway -> validator -> reply
        assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid", r.text
        r = await client.post("/validate/batch", json=[PATIENT, BAD_PATIENT])  # storage assembles
        assert r.status_code == 202, r.text
        status = await wait_final(client, r.headers["location"])
        assert (status["state"], status["valid"], status["invalid"]) == ("succeeded", 1, 1), status
        sd = sd_from_core("heartrate")
        r = await client.post(
            "/convert/structuredefinition", params={"store": "true", "package": "auth#1.0.0"}, json=sd
        )
        assert r.status_code == 200, r.text  # gateway -> converter -> storage (schema put)
        listed: list[Any] = []
        for _ in range(100):
            listed = (await client.get("/schemas", params={"url": sd["url"], "package": "auth#1.0.0"})).json()
            if listed:
                break
            await asyncio.sleep(0.1)
        assert listed, "the converted schema was never stored"
        r = await client.get("/info")  # heartbeats of every service in KV
        assert r.status_code == 200
    log = nats_server.log_path.read_text()
    assert "Permissions Violation" not in log, [ln for ln in log.splitlines() if "Violation" in ln][:10]


async def test_the_ig_routes_as_the_services_users(stack: Stack, nats_server: RunningServer) -> None:
    """/ig/* with the generated permissions: the gateway writes KV_INGEST, publishes the ingest
    request and asks ig-ingest (schedule, registry search); ig-ingest stores the schemas through
    storage's durable subjects and registers the package (as under `make up`)."""
    spec = "hl7.fhir.us.core#3.1.1"
    async with stack.client() as client:
        sched = {"cron": "0 4 * * *", "timezone": "UTC", "packages": [spec], "masks": [], "enabled": False}
        r = await client.put("/ig/schedule", json=sched)
        assert r.status_code == 200, r.text
        assert {k: v for k, v in (await client.get("/ig/schedule")).json().items() if k in sched} == sched
        job = await process(client, {"packages": [spec]}, timeout=120)
        assert job["state"] == "succeeded", job
        us_core = next(p for p in job["packages"] if p["name"] == "hl7.fhir.us.core")
        listed = await client.get("/schemas", params={"package": spec, "limit": 1})
        assert int(listed.headers["x-total-count"]) == us_core["schemas"] > 0, listed.text
        overview = (await client.get("/ig/status")).json()
        assert spec in {f"{p['name']}#{p['version']}" for p in overview["packages"]}
        found = await client.get("/ig/registry", params={"name": "hl7.fhir.us.core"})
        assert found.status_code == 200 and any(p["name"] == "hl7.fhir.us.core" for p in found.json()), (
            found.text
        )
    log = nats_server.log_path.read_text()
    assert "Permissions Violation" not in log, [ln for ln in log.splitlines() if "Violation" in ln][:10]


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("validator", s.STORAGE_PUT_SCHEMA),  # only the converter and ig-ingest write schemas
        ("validator", s.INGEST_PACKAGE),
        ("converter", f"{s.VALIDATE_RESULT}.job"),
        ("storage", s.VALIDATE_ONE),
        ("ig-ingest", s.STORAGE_UPSERT + ".x"),
        ("gateway", f"{s.DEAD_LETTER}x"),
        ("validator", f"{s.SERVICE_HEARTBEAT}.gateway"),  # a heartbeat in another's name
        ("validator", f"$JS.API.STREAM.DELETE.{s.STREAM_REQUESTS}"),
        ("gateway", f"$JS.API.STREAM.PURGE.{s.STREAM_DEAD_LETTERS}"),
        ("converter", f"$KV.{s.KV_REPOSITORY}.{s.REPOSITORY_STATE_KEY}"),  # storage's alone
    ],
)
async def test_publish_outside_permissions_is_refused(
    nats_server: RunningServer, user: str, subject: str
) -> None:
    errors: list[str] = []
    nc = await connect(nats_server, user, errors)
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.02)
        assert any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors), (
            errors
        )
    finally:
        await nc.close()


async def test_pull_and_subscribe_outside_permissions_are_refused(nats_server: RunningServer) -> None:
    admin = await connect(nats_server, perms.ADMIN)
    await ensure_topology(admin.jetstream())
    await admin.close()
    errors: list[str] = []
    nc = await connect(nats_server, "validator", errors)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(s.DURABLE_INGEST, stream=s.STREAM_REQUESTS)
        with pytest.raises(Exception):  # noqa: B017 - no MSG.NEXT permission: nothing comes back
            await sub.fetch(1, timeout=1.0)
        await nc.subscribe(s.STORAGE_GET_SCHEMA)  # storage's request subject
        await nc.flush()
        await asyncio.sleep(0.2)
        assert any("msg.next" in e.lower() and s.DURABLE_INGEST in e.lower() for e in errors), errors
        assert any("subscription" in e.lower() and s.STORAGE_GET_SCHEMA in e.lower() for e in errors), errors
    finally:
        await nc.close()


async def test_a_service_user_runs_its_own_topology(nats_server: RunningServer) -> None:
    for user in perms.SERVICES:
        errors: list[str] = []
        nc = await connect(nats_server, user, errors)
        try:
            await ensure_topology(nc.jetstream())  # every service does at start-up
            assert errors == [], (user, errors)
        finally:
            await nc.close()


async def test_no_way_in_without_the_right_credentials(nats_server: RunningServer) -> None:
    for options in ({}, {"user": "validator", "password": "wrong"}, {"user": "nobody", "password": "x"}):
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(nats_server.url, max_reconnect_attempts=0, allow_reconnect=False, **options)


def test_every_application_subject_has_its_publishers() -> None:
    """A subject added to subjects.py without deciding who may publish it fails here (before
    `make up` and Kubernetes refuse it at run time)."""
    names = {
        k: v
        for k, v in vars(s).items()
        if k.isupper() and isinstance(v, str) and v.startswith(s.PREFIX + ".")
    }
    granted = {
        subject.removesuffix(".>")
        for svc in perms.SERVICES
        for subject in [*perms.PUBLISH[svc], *perms.SERVE[svc]]
    }
    shared = {s.SERVICE_HEARTBEAT, s.DEAD_LETTER}  # every service's, as permissions() grants
    missing = sorted(k for k, v in names.items() if v not in granted | shared)
    assert missing == [], f"no service may publish {missing}: grant them in nats_permissions.py"
    pulled = [d for ds in perms.PULLS.values() for d in ds]
    assert sorted(pulled) == sorted(d.name for d in DURABLES)  # each durable has its one service


def test_config_is_valid_for_nats_server(tmp_path: Path) -> None:
    conf = tmp_path / "auth.conf"
    conf.write_text(perms.config(PASSWORDS))
    out = subprocess.run([find_binary(("nats-server",), "NATS_SERVER_BIN"), "-t", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
