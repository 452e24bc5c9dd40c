"""The gateway under hostile input: oversized headers, path traversal in schema ids and package
names (plain and encoded), and schemathesis over the OpenAPI document with auth on and off —
no server error on any of it (tests/services/fuzz.py: a 503 with Retry-After and a 504 with its
job id are answers the API documents).

The token and key cases (missing, malformed, expired, wrong audience / issuer / signature,
revoked) are in test_gateway_auth.py. A longer schemathesis run: scripts/fuzz_gateway.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest
from gateway.app import create_app
from gateway.service.auth import SCOPES, digest_of

from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import AuthSettings
from tests.services.fuzz import fuzz
from tests.services.test_gateway_auth import app_for
from tests.services.test_gateway_support import Stack, serving, settings_for


async def raw(port: int, request: bytes, chunk: int = 64 * 1024) -> tuple[int, bytes]:
    """Send `request` as it is (no client normalising the path); the status and body answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):  # the server may close before it has all
            for i in range(0, len(request), chunk):
                writer.write(request[i : i + chunk])
                await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:  # closed with our bytes unread: the answer may be lost
            return 0, b""
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_oversized_headers_are_431_and_bounded(tmp_path: Path) -> None:
    app = app_for(tmp_path, "off")
    async with serving(app, max_header_bytes=32 * 1024) as port:
        ok = b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Pad: " + b"a" * 8_000 + b"\r\n\r\n"
        assert (await raw(port, ok))[0] == 200
        for size in (100_000, 10_000_000):  # one header of 100 kB, 10 MB (sent in 64 kB writes)
            big = b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * size + b"\r\n\r\n"
            status, body = await raw(port, big)
            if status == 0 and size > 1_000_000:
                continue  # the connection was closed mid-upload (a reset may drop the 431): bounded
            assert status == 431 and orjson.loads(body)["issue"][0]["code"] == "too-long", (size, body[:200])
        many = (
            b"GET /health HTTP/1.1\r\nHost: gw\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
            + b"\r\n"
        )
        assert (await raw(port, many))[0] == 431  # many small headers count the same
        # A large body behind small headers is not a large header (the body has its own limit).
        body = orjson.dumps({"resourceType": "Patient", "text": {"div": "x" * 200_000}})
        post = (b"POST /validate HTTP/1.1\r\nHost: gw\r\nContent-Type: application/fhir+json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body  # fmt: skip
        assert (await raw(port, post))[0] == 503  # past the gateway's checks: no validator here
        # Keep-alive: the second request's head is counted on its own.
        two = ok.replace(b"Connection: close\r\n", b"") + ok
        status, rest = await raw(port, two)
        assert status == 200 and b"HTTP/1.1 200" in rest


TRAVERSALS = [
    "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%252F..%252F",
    "_index/records/x", "%2E%2E/%2E%2E/_index", "....//....//", "..\\..\\windows", "%00", "a%00b",
]  # fmt: skip


async def test_path_traversal_in_schema_ids(stack: Stack) -> None:
    port = int(stack.base_url.rsplit(":", 1)[1])
    for t in TRAVERSALS:
        for method in ("GET", "DELETE"):
            status, body = await raw(
                port, f"{method} /schemas/{t} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode()
            )
            assert status in (400, 404), (method, t, status, body[:300])
        status, body = await raw(
            port, f"GET /{t}/$validate HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode()
        )
        assert status in (400, 404, 405), (t, status, body[:300])


async def test_path_traversal_in_package_names(stack: Stack) -> None:
    from tests.services.test_gateway import sd_from_core

    sd = sd_from_core("Patient")
    sd = {
        **sd,
        "url": "http://example.org/StructureDefinition/traversal",
        "name": "Traversal",
        "version": "1",
    }
    async with stack.client() as c:
        for package in (
            "../../evil#1.0",
            "..%2F..%2Fevil#1.0",
            "hl7.fhir.r4.core#../../4.0.1",
            "a/../../b#1",
            "#",
            "..#..",
        ):
            for path in ("/validate", "/$validate", "/validate/batch"):  # refused before any lookup
                r = await c.post(path, params={"package": package}, json={"resourceType": "Patient"})
                assert r.status_code == 400 and "package" in r.json()["issue"][0]["diagnostics"], (
                    path,
                    package,
                )
            r = await c.get("/schemas", params={"package": package})
            assert r.status_code == 200 and r.json() == [], (package, r.text)
            r = await c.post("/schemas", params={"package": package, "replace": "true"}, json=sd)
            assert r.status_code in (201, 400, 422), (package, r.status_code, r.text)
            if r.status_code == 201:  # stored as an upload: its object key stays inside the bucket's layout
                record = r.json()
                segments = record["object"]["key"].split("/")
                assert all(seg not in ("", ".", "..") for seg in segments), record  # no way out of it
                assert (await c.delete(f"/schemas/{record['id']}")).status_code == 204


@pytest.mark.parametrize("auth", ["off", "required", "required, no key"])
async def test_schemathesis_no_server_errors(
    nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer, stack: Stack, tmp_path: Path,
    auth: str,
) -> None:  # fmt: skip
    """A bounded run over every operation of the OpenAPI document, against the real stack
    (scripts/fuzz_gateway.py runs longer): no server error."""
    if auth == "off":
        failures, sent = await asyncio.to_thread(fuzz, stack.base_url, {}, 6)
    else:
        keys = tmp_path / "keys"
        keys.write_text(f"{digest_of('fuzz-key')} {','.join(SCOPES)} fuzzer\n")
        st = settings_for(nats_server.url, s3_server, redis_server.url)
        st.auth = AuthSettings(auth="required", api_keys_file=keys)
        async with serving(create_app(st)) as port:
            headers = {} if "no key" in auth else {"X-API-Key": "fuzz-key"}
            failures, sent = await asyncio.to_thread(
                fuzz, f"http://127.0.0.1:{port}", headers, 2 if headers == {} else 6
            )
    assert sent > 40 and failures == [], f"{len(failures)} of {sent}:\n" + "\n".join(failures[:20])
