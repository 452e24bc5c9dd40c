"""The gateway over real NATS, S3 and Redis, with the real validator and storage services."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import DeadLetter, JobKind
from fhirschema_bus.servers import free_port
from fhirschema_bus.settings import AuthSettings, RateLimitSettings
from tests.services.test_gateway_support import (
    MAX_BODY,
    MAX_ITEMS,
    R4,
    Stack,
    service_env,
    serving,
    settings_for,
    start_service,
    stop_process,
)

PATIENT = {"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01"}
BAD_PATIENT = {"resourceType": "Patient", "gender": "robot", "birthDate": "yesterday"}
FHIR = {"content-type": "application/fhir+json"}


async def wait_final(client: httpx.AsyncClient, path: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


def sd_from_core(name: str) -> dict[str, Any]:
    with tarfile.open(R4) as tar:
        f = tar.extractfile(f"package/StructureDefinition-{name}.json")
        assert f is not None
        return orjson.loads(f.read())


# --- operations -------------------------------------------------------------------------------


async def test_health_openapi_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    paths = (await client.get("/openapi.json")).json()["paths"]
    for p in (
        "/validate",
        "/validate/batch",
        "/schemas/{schema_id}",
        "/jobs/{job_id}",
        "/dead-letters/{seq}/replay",
    ):
        assert p in paths
    assert (await client.get("/openapi")).json() == (await client.get("/openapi.json")).json()


async def test_docs_work_offline(client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assert "swagger" in html.lower() or "redoc" in html.lower()
        # Every script and stylesheet comes from the gateway itself, none from a CDN.
        assets = re.findall(r'(?:src|href)=["\']([^"\']+\.(?:js|css))', html) + re.findall(
            r'url: *["\']([^"\']+)', html
        )
        assert assets, html
        for url in assets:
            assert url.startswith("/"), (page, url)
            r = await client.get(url)
            assert r.status_code == 200 and len(r.content) > 100, (url, r.status_code)


async def test_ready_and_info(client: httpx.AsyncClient) -> None:
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    assert all(c["ok"] for c in r.json()["checks"].values())
    for _ in range(50):  # the validator's heartbeat lands in KV within a moment
        info = (await client.get("/info")).json()
        if any(sv["service"] == "validator" for sv in info["services"]):
            break
        await asyncio.sleep(0.2)
    assert info["version"] and info["nats"] is True
    assert {sv["service"] for sv in info["services"]} >= {"validator"}


async def test_ready_names_what_failed(nats_server, s3_server, stack: Stack) -> None:
    from gateway.app import create_app

    st = settings_for(nats_server.url, s3_server, "redis://127.0.0.1:1/0")
    app = create_app(st)
    transport = httpx.ASGITransport(app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as c,
    ):
        r = await c.get("/ready")
    assert r.status_code == 503
    assert r.json()["failed"] == ["redis"]


async def test_nats_unavailable_is_503(s3_server, redis_server, stack: Stack) -> None:
    from gateway.app import create_app

    app = create_app(settings_for("nats://127.0.0.1:1", s3_server, redis_server.url))
    transport = httpx.ASGITransport(app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as c,
    ):
        assert (await c.get("/health")).status_code == 200
        r = await c.post("/validate", json=PATIENT)
        assert r.status_code == 503 and "NATS" in r.text and int(r.headers["retry-after"]) > 0
        ready = await c.get("/ready")
        assert ready.status_code == 503 and "nats" in ready.json()["failed"]


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/validate", json=PATIENT)
    text = (await client.get("/metrics")).text
    assert 'gateway_http_requests_total{method="POST",route="/validate",status="200"}' in text
    assert 'gateway_http_request_seconds_count{method="POST",route="/validate",status="200"}' in text
    assert re.search(r'fhirschema_build_info\{.*service="gateway",version="[^"]+"\} 1.0', text)
    assert "gateway_sync_validations_in_flight" in text and "gateway_sync_timeouts_total" in text


# --- POST /validate ---------------------------------------------------------------------------


async def test_validate_valid_and_invalid(client: httpx.AsyncClient) -> None:
    r = await client.post("/validate", content=orjson.dumps(PATIENT), headers=FHIR)
    assert r.status_code == 200 and r.headers["x-validation-result"] == "valid"
    assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.post("/validate", json=BAD_PATIENT)
    assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid"
    assert any(i["severity"] == "error" for i in r.json()["issue"])


async def test_validate_with_profile_query(client: httpx.AsyncClient) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
    r = await client.post(
        "/validate", params={"profile": "http://hl7.org/fhir/StructureDefinition/bodyweight"}, json=obs
    )
    assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid"  # no category, no value


async def test_validate_large_resource_goes_by_reference(client: httpx.AsyncClient) -> None:
    big = {**PATIENT, "name": [{"family": f"N{i:06d}" * 8} for i in range(12_000)]}
    body = orjson.dumps(big)
    assert 512 * 1024 < len(body) < MAX_BODY
    r = await client.post("/validate", content=body, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.headers["x-validation-result"] == "valid"


async def test_validate_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("/validate", content=b"{not json", headers=FHIR)
    assert r.status_code == 400 and "not JSON" in r.json()["issue"][0]["diagnostics"]
    assert (await client.post("/validate", content=b"[1]", headers=FHIR)).status_code == 400
    r = await client.post("/validate", content=b"<Patient/>", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
    r = await client.post("/validate", content=b'{"a":"' + b"x" * MAX_BODY + b'"}', headers=FHIR)
    assert r.status_code == 413


async def test_validate_timeout_then_status(client: httpx.AsyncClient) -> None:
    # A Bundle that takes the validator far longer than the timeout: a tiny resource can be
    # answered while the gateway still waits for JetStream's publish ack, and then there is no 504.
    # 10,000 entries: ~140 ms for the compiled engine (3,000 took 38 ms, under the old 50 ms).
    entries = [
        {"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}", "resource": PATIENT} for i in range(10_000)
    ]
    entries.append({"fullUrl": "urn:uuid:00000000-0000-0000-0000-999999999999", "resource": BAD_PATIENT})
    slow = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    r = await client.post("/validate", params={"timeout": 0.02}, json=slow)
    assert r.status_code == 504, r.text
    job = r.json()["job"]
    assert r.headers["location"] == f"/validate/status/{job}"
    status = await wait_final(client, f"/validate/status/{job}")
    assert status["state"] == "succeeded" and status["invalid"] == 1
    lines = (await client.get(f"/validate/results/{job}")).text.splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["valid"] is False
    assert "gateway_sync_timeouts_total 1.0" in (await client.get("/metrics")).text


# --- batches ----------------------------------------------------------------------------------


async def _sample(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_batch_json_array(client: httpx.AsyncClient) -> None:
    items = [PATIENT, BAD_PATIENT, PATIENT, {"resourceType": "Patient", "active": "yes"}]
    before = await _sample(client, "gateway_batch_items_total", kind="validate")
    r = await client.post("/validate/batch", json=items)
    assert r.status_code == 202, r.text
    # Every item counted, not only the oversized ones (chunks of small items were missed).
    assert await _sample(client, "gateway_batch_items_total", kind="validate") == before + 4
    job = r.json()["job"]
    assert r.headers["location"] == f"/validate/status/{job}"
    status = await wait_final(client, r.headers["location"])
    assert status["state"] == "succeeded"
    assert (status["total"], status["done"], status["valid"], status["invalid"]) == (4, 4, 2, 2)
    r = await client.get(f"/validate/results/{job}", params={"wait": 10})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    rows = [orjson.loads(x) for x in r.text.splitlines()]
    assert [x["index"] for x in rows] == [0, 1, 2, 3]  # one ValidateResultChunk, read in order
    assert [x["valid"] for x in rows] == [True, False, True, False]
    assert rows[1]["source"] == "1" and rows[1]["outcome"]["resourceType"] == "OperationOutcome"
    for _ in range(100):  # the storage service assembles the results into one S3 object
        status = (await client.get(f"/validate/status/{job}")).json()
        if status["results"]:
            break
        await asyncio.sleep(0.1)
    assert status["results"], "results never assembled"
    r = await client.get(f"/validate/results/{job}")
    assert sorted((orjson.loads(x) for x in r.text.splitlines()), key=lambda x: x["index"]) == rows


async def test_batch_bundle_and_ndjson(client: httpx.AsyncClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": PATIENT}] * 3}
    r = await client.post("/validate/batch", content=orjson.dumps(bundle), headers=FHIR)
    assert r.status_code == 202
    assert (await wait_final(client, r.headers["location"]))["valid"] == 3
    nd = b"\n".join(orjson.dumps(x) for x in (PATIENT, BAD_PATIENT)) + b"\n\n"
    r = await client.post("/validate/batch", content=nd, headers={"content-type": "application/x-ndjson"})
    job = r.json()["job"]
    status = await wait_final(client, r.headers["location"])
    assert (status["valid"], status["invalid"]) == (1, 1)
    rows = [orjson.loads(x) for x in (await client.get(f"/validate/results/{job}?wait=10")).text.splitlines()]
    assert sorted(x["source"] for x in rows) == ["line 1", "line 2"]


async def test_batch_errors(client: httpx.AsyncClient) -> None:
    # An NDJSON line that is not JSON is an item that failed (as in the CLI), not a refused batch.
    assert (await client.post("/validate/batch", content=b"[}", headers=FHIR)).status_code == 400
    assert (await client.post("/validate/batch", json=[])).status_code == 400
    assert (await client.post("/validate/batch", json={"resourceType": "Patient"})).status_code == 400
    assert (await client.post("/validate/batch", json=[{}] * (MAX_ITEMS + 1))).status_code == 413
    big = b"[" + b",".join([b'{"resourceType":"Patient","id":"' + b"x" * 1000 + b'"}'] * 2100) + b"]"
    assert (await client.post("/validate/batch", content=big, headers=FHIR)).status_code == 413
    r = await client.post("/validate/batch", content=b"a,b", headers={"content-type": "text/csv"})
    assert r.status_code == 415
    for path in ("/validate/status/nope", "/validate/results/nope", "/convert/status/nope"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"


# --- jobs -------------------------------------------------------------------------------------


async def test_jobs_list_and_cancel(client: httpx.AsyncClient, stack: Stack) -> None:
    job = await stack.jobs.create(JobKind.VALIDATE, 10)
    r = await client.get("/jobs", params={"kind": "validate"})
    assert job.id in [j["id"] for j in r.json()]
    r = await client.delete(f"/jobs/{job.id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert (await client.get(f"/validate/status/{job.id}")).json()["state"] == "cancelled"
    assert (await client.delete("/jobs/unknown")).status_code == 404


# --- WebSocket --------------------------------------------------------------------------------


async def test_websocket_outcomes_and_events(stack: Stack) -> None:
    job = await stack.jobs.create(JobKind.VALIDATE, 2)
    async with websockets.connect(f"{stack.ws_url}/validate/stream") as ws:
        await ws.send(orjson.dumps(PATIENT).decode())
        await ws.send(orjson.dumps(BAD_PATIENT).decode())
        got = {m["index"]: m for m in [orjson.loads(await ws.recv()) for _ in range(2)]}
        assert got[0]["valid"] is True and got[1]["valid"] is False
        assert got[1]["outcome"]["resourceType"] == "OperationOutcome"
        await ws.send("{broken")
        assert "not JSON" in orjson.loads(await ws.recv())["error"]
        await ws.send(orjson.dumps({"subscribe": job.id}).decode())
        first = orjson.loads(await ws.recv())
        assert first["job"] == job.id and first["status"]["total"] == 2
        await stack.jobs.record(job.id, 0, "valid")
        await stack.jobs.record(job.id, 1, "invalid")
        events = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        assert events[-1]["event"]["state"] == "succeeded" and events[-1]["event"]["done"] == 2
        await ws.send(orjson.dumps({"subscribe": "nope"}).decode())
        assert orjson.loads(await ws.recv())["status"] == 404


async def _until_final(ws: Any, job_id: str) -> list[dict[str, Any]]:
    """Messages about `job_id` until one says the job is final (snapshot or event)."""
    got: list[dict[str, Any]] = []
    while True:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        assert msg.get("job") == job_id, msg
        got.append(msg)
        if (msg.get("status") or msg.get("event") or {}).get("state") == "succeeded":
            return got


async def test_websocket_subscribe_after_the_job_finished(stack: Stack) -> None:
    job = await stack.jobs.create(JobKind.VALIDATE, 2)
    await stack.jobs.record(job.id, 0, "valid")
    await stack.jobs.record(job.id, 1, "invalid")
    async with websockets.connect(f"{stack.ws_url}/validate/stream") as ws:
        await ws.send(orjson.dumps({"subscribe": job.id}).decode())
        first = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        assert first["status"]["state"] == "succeeded" and first["status"]["done"] == 2


async def test_websocket_subscribe_has_no_gap(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # The job finishes right after the gateway read its state: that state says "queued", so the
    # finishing events must come through the subscription (made before the read).
    job = await stack.jobs.create(JobKind.VALIDATE, 1)
    store = await stack.app.state.container.jobs()
    read = store.get

    async def read_then_finish(job_id: str) -> Any:
        snapshot = await read(job_id)
        if job_id == job.id:
            await stack.jobs.record(job.id, 0, "valid")
        return snapshot

    monkeypatch.setattr(store, "get", read_then_finish)
    async with websockets.connect(f"{stack.ws_url}/validate/stream") as ws:
        await ws.send(orjson.dumps({"subscribe": job.id}).decode())
        got = await _until_final(ws, job.id)
    assert got[0]["status"]["state"] == "queued", got
    assert got[-1]["event"] == {**got[-1]["event"], "state": "succeeded", "done": 1, "valid": 1}


# --- conversion and schemas -------------------------------------------------------------------


async def test_convert(client: httpx.AsyncClient) -> None:
    formats = (await client.get("/convert/formats")).json()
    assert formats["outputs"][0]["format"] == "FHIRSchema"
    sd = sd_from_core("bodyweight")
    r = await client.post("/convert/structuredefinition", json=sd)
    assert r.status_code == 200, r.text
    assert r.json()["url"] == sd["url"]
    r = await client.post(
        "/convert/structuredefinition", params={"store": "true", "package": "demo#2.0.0"}, json=sd
    )
    assert r.status_code == 200 and r.headers["x-schema-stored"]
    for _ in range(100):  # stored asynchronously by the storage service
        listed = (await client.get("/schemas", params={"url": sd["url"], "package": "demo#2.0.0"})).json()
        if listed:
            break
        await asyncio.sleep(0.1)
    assert listed and listed[0]["package"] == "demo#2.0.0"
    assert (await client.post("/convert/structuredefinition", json=PATIENT)).status_code == 400
    r = await client.post("/convert/batch", json=[sd, sd_from_core("heartrate")])
    assert r.status_code == 202
    status = await wait_final(client, r.headers["location"])
    assert status["state"] == "succeeded" and status["done"] == 2


async def test_schemas_crud(client: httpx.AsyncClient) -> None:
    schema = {"url": "http://example.org/fhir/StructureDefinition/demo", "name": "demo", "type": "Patient"}
    schema |= {
        "kind": "resource",
        "derivation": "constraint",
        "base": "http://hl7.org/fhir/StructureDefinition/Patient",
    }
    schema["elements"] = {"gender": {"min": 1}}
    r = await client.post("/schemas", json=schema)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.headers["location"] == f"/schemas/{sid}" and sid.startswith("demo-")
    listed = await client.get("/schemas", params={"url": schema["url"]})
    assert [x["id"] for x in listed.json()] == [sid] and listed.headers["x-total-count"] == "1"
    again = await client.post("/schemas", json=schema)  # the same url|version: explicit, not a duplicate
    assert again.status_code == 409 and f"PUT /schemas/{sid}" in again.json()["issue"][0]["diagnostics"]
    assert again.json()["issue"][0]["code"] == "conflict"
    r = await client.post("/schemas", params={"replace": "true"}, json=schema)
    assert r.status_code == 201 and r.json()["id"] == sid
    assert (await client.get(f"/schemas/{sid}")).json()["elements"] == {"gender": {"min": 1}}
    r = await client.put(f"/schemas/{sid}", json={**schema, "elements": {"gender": {"min": 0}}})
    assert r.status_code == 200 and r.json()["id"] == sid
    assert (await client.get(f"/schemas/{sid}")).json()["elements"] == {"gender": {"min": 0}}
    moved = await client.put(f"/schemas/{sid}", json={**schema, "version": "2"})
    assert moved.status_code == 409  # a replacement keeps url, version and package
    assert (await client.put("/schemas/nope-0000000000000000", json=schema)).status_code == 404
    assert (await client.delete(f"/schemas/{sid}")).status_code == 204
    assert (await client.get(f"/schemas/{sid}")).status_code == 404
    assert (await client.delete(f"/schemas/{sid}")).status_code == 404
    r = await client.post("/schemas", json=sd_from_core("bodyweight"), params={"package": "demo#1.0.0"})
    assert r.status_code == 201, r.text
    assert r.json()["url"] == "http://hl7.org/fhir/StructureDefinition/bodyweight"
    assert (await client.post("/schemas", json={"hello": 1})).status_code == 400
    assert (
        await client.post("/schemas", content=b"x", headers={"content-type": "text/plain"})
    ).status_code == 415


# --- dead letters -----------------------------------------------------------------------------


async def test_dead_letters(client: httpx.AsyncClient, stack: Stack) -> None:
    payload = orjson.dumps({"job_id": "dl-test", "resource": PATIENT})
    letter = DeadLetter(
        subject=s.VALIDATE_BATCH_ITEM, payload=base64.b64encode(payload).decode(), error="boom",
        deliveries=5, service="validator",
    )  # fmt: skip
    ack = await stack.js.publish(
        f"{s.DEAD_LETTER}.{s.VALIDATE_BATCH_ITEM}", letter.model_dump_json().encode()
    )
    listed = (await client.get("/dead-letters")).json()
    assert any(x["stream_seq"] == ack.seq and x["error"] == "boom" for x in listed)
    r = await client.get(f"/dead-letters/{ack.seq}")
    assert r.status_code == 200 and r.json()["deliveries"] == 5
    r = await client.post(f"/dead-letters/{ack.seq}/replay")
    assert r.status_code == 202 and r.json()["subject"] == s.VALIDATE_BATCH_ITEM
    assert (await client.get("/dead-letters/999999")).status_code == 404
    assert (await client.post("/dead-letters/999999/replay")).status_code == 404


async def test_python_m_gateway_serves(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    env = {**service_env(stack.settings), "FHIRSCHEMA_GATEWAY_PORT": str(port)}
    proc = start_service("gateway", env, tmp_path / "gateway.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            # Start-up takes about 1 s on an idle machine; CI machines can be loaded far more.
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = await c.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()[-2000:]
                    await asyncio.sleep(0.1)
            assert r.status_code == 200
            r = await c.post("/validate", json=PATIENT)
            assert r.status_code == 200 and r.headers["x-validation-result"] == "valid"
    finally:
        stop_process(proc)
    assert proc.returncode is not None


# --- who may do what (FHIRSCHEMA_AUTH=required; the unit tier: test_gateway_auth.py) ------------


async def test_auth_required(
    nats_server, s3_server, redis_server, stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second gateway with a key file over the module's stack: no key 401, a key without the
    scope 403, a key past its limit 429, the right key the engine's verdict; on HTTP and
    WebSocket (headers, or the subprotocols a browser sets; refusals closed 4401 / 4403); the
    keys never logged; a revoked key 401."""
    from gateway.app import create_app
    from gateway.service.auth import digest_of

    caplog.set_level(logging.INFO)

    keys = tmp_path / "keys"
    keys.write_text(
        f"{digest_of('validator-key')} validate validator\n{digest_of('reader-key')} schemas:read reader\n"
    )
    port = free_port()
    st = settings_for(nats_server.url, s3_server, redis_server.url, port)
    st.auth = AuthSettings(auth="required", api_keys_file=keys)
    st.rate_limit = RateLimitSettings(rate_limit_scopes={"schemas:read": "2/minute"})  # counted in Valkey
    async with serving(create_app(st), port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        assert (await c.get("/ready")).status_code == 200  # probes need no key
        r = await c.post("/validate", json=BAD_PATIENT)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("ApiKey")
        assert r.json()["issue"][0]["code"] == "login"
        r = await c.post("/validate", json=BAD_PATIENT, headers={"X-API-Key": "reader-key"})
        assert r.status_code == 403 and "'validate'" in r.json()["issue"][0]["diagnostics"]
        r = await c.post("/validate", json=BAD_PATIENT, headers={"X-API-Key": "validator-key"})
        assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid"
        for left in ("1", "0"):
            r = await c.get("/schemas", headers={"X-API-Key": "reader-key"})
            assert r.status_code == 200 and r.headers["ratelimit-remaining"] == left
        r = await c.get("/schemas", headers={"X-API-Key": "reader-key"})  # a key past its limit
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1

        with pytest.raises(websockets.InvalidStatus) as denied:
            async with websockets.connect(f"ws://127.0.0.1:{port}/validate/stream"):
                pass
        assert denied.value.response.status_code == 401
        # Headers (programs), or the subprotocols a browser can set: only fhirschema.v1 echoed.
        url = f"ws://127.0.0.1:{port}/validate/stream"
        for headers, protocols in [({"X-API-Key": "validator-key"}, None),
                                   ({}, ["fhirschema.v1", "apikey.validator-key"])]:  # fmt: skip
            async with websockets.connect(url, additional_headers=headers, subprotocols=protocols) as ws:
                assert ws.response.headers.get("Sec-WebSocket-Protocol") == (protocols and protocols[0])
                await ws.send(orjson.dumps(BAD_PATIENT).decode())
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                assert frame["index"] == 0 and frame["valid"] is False
        for protocols, code in [(["fhirschema.v1"], 4401), (["fhirschema.v1", "apikey.reader-key"], 4403)]:
            async with websockets.connect(url, subprotocols=protocols) as ws:  # a browser's refusal
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == code
                assert closed.value.rcvd.reason  # says why: a browser sees no HTTP status
        with pytest.raises(websockets.InvalidStatus) as denied:  # never in the query string
            async with websockets.connect(f"{url}?api_key=validator-key"):
                pass
        assert denied.value.response.status_code == 401
        server_side = [r for r in caplog.records if not r.name.startswith("websockets")]  # not our client's
        assert not [
            r for r in server_side if "validator-key" in r.getMessage() or "reader-key" in r.getMessage()
        ]

        keys.write_text(f"{digest_of('reader-key')} schemas:read reader\n")  # the validator key revoked
        deadline = time.monotonic() + 5
        while (
            r := await c.post("/validate", json=PATIENT, headers={"X-API-Key": "validator-key"})
        ).status_code != 401:
            assert time.monotonic() < deadline, r.status_code
            await asyncio.sleep(0.1)
