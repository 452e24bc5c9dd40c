"""Who may do what at the gateway, without servers: the key file, the scopes on every route, 401 /
403 as OperationOutcomes, the open routes, WebSockets, and reloading the keys. The same over
real NATS/S3/Redis with a real validator: tests/services/test_gateway.py::test_auth_required."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import watchfiles
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gateway.adapters.key_file import KeyFile
from gateway.app import create_app
from gateway.bootstrap import Settings
from gateway.service.auth import SCOPES, ApiKeys, KeyFileError, digest_of
from jwt.algorithms import RSAAlgorithm
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.reload import ConfigWatcher, Reloads, events_of
from fhirschema_bus.settings import (
    AuthSettings,
    CorsSettings,
    GatewaySettings,
    LogSettings,
    NatsSettings,
    RedisSettings,
    S3Settings,
)

KEYS = {"v-key-1": ("validate", "validator"), "r-key-2": ("schemas:read", "reader"),
        "a-key-3": ("jobs:admin,dead-letters:admin", "admin"),
        "w-key-4": ("convert,schemas:write,ig:admin", "writer")}  # fmt: skip
OPEN = {"/health", "/ready", "/metrics", "/metadata", "/openapi", "/openapi.json", "/docs", "/redoc"}


def key_file(path: Path, keys: dict[str, tuple[str, str]] = KEYS) -> Path:
    lines = ["# digest scopes name"] + [f"{digest_of(k)} {sc} {name}" for k, (sc, name) in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def app_for(tmp_path: Path, mode: str = "required") -> FastAPI:
    """The real app, not started: nothing is reachable behind it (NATS, S3 and Redis on closed
    ports), so a request that passes the checks gets a 503, one that does not a 401 / 403."""
    settings = Settings(
        gateway=GatewaySettings(ready_wait_seconds=0.0, sync_timeout_seconds=0.5),
        nats=NatsSettings(url="nats://127.0.0.1:1"),
        s3=S3Settings(endpoint="127.0.0.1:1", access_key="a", secret_key="b"),  # type: ignore[arg-type]
        redis=RedisSettings(url="redis://127.0.0.1:1/0"),
        auth=AuthSettings(auth=mode, api_keys_file=key_file(tmp_path / "keys")),  # type: ignore[arg-type]
    )
    return create_app(settings)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return app_for(tmp_path)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")


# --- the key file -------------------------------------------------------------------------------


def test_key_file_lines() -> None:
    keys = ApiKeys.parse(f"# a comment\n\n{digest_of('k1')} validate,convert alice  # inline\n"
                         f"{digest_of('k2').upper()} schemas:read  build bot\n")  # fmt: skip
    alice, bot = keys.find("k1"), keys.find("k2")
    assert alice is not None and alice.name == "alice" and alice.scopes == {"validate", "convert"}
    assert bot is not None and bot.name == "build bot" and bot.scopes == {"schemas:read"}
    assert keys.find("k3") is None and keys.find("") is None and len(keys) == 2


async def test_key_file_wakes_only_for_its_own_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another file written in the key file's folder (a log) re-read nothing and logged nothing
    (it did: watchfiles' 'N changes detected' at INFO and a re-read every 200 ms)."""
    ours = events_of(tmp_path / "keys")
    assert ours(watchfiles.Change.modified, str(tmp_path / "keys"))
    assert ours(watchfiles.Change.added, str(tmp_path / "..data"))  # a Kubernetes Secret's swap
    assert not ours(watchfiles.Change.modified, str(tmp_path / "gateway.log"))
    path = key_file(tmp_path / "keys")
    keys = KeyFile(path)
    caplog.set_level(logging.INFO)
    keys.start()
    try:
        for n in range(30):
            (tmp_path / "gateway.log").write_text("line\n" * n)
            await asyncio.sleep(0.05)
        assert not [r.getMessage() for r in caplog.records if r.name.startswith("watchfiles")]
        key_file(path, {"new-key": ("validate", "newcomer")})
        for _ in range(100):
            if keys.keys.find("new-key") is not None:
                break
            await asyncio.sleep(0.05)
        assert keys.keys.find("new-key") is not None
    finally:
        await keys.stop()


@pytest.mark.parametrize(
    "line, message",
    [
        ("abc validate x", "64 hex digits"),
        (f"{digest_of('k')} validate", "expected '<sha256 hex>"),
        (f"{digest_of('k')} validate,admin x", "unknown scope admin"),
        (f"{digest_of('k')} validate x\n{digest_of('k')} convert y", "line 2: the same key digest"),
    ],
)
def test_key_file_errors_name_the_line_not_the_digest(line: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=re.escape(message)) as e:
        ApiKeys.parse(line, "keys.txt")
    assert "keys.txt line" in str(e.value) and digest_of("k") not in str(e.value)


async def test_key_file_reloads_on_change_and_keeps_the_keys_when_broken(tmp_path: Path) -> None:
    path = key_file(tmp_path / "keys")
    keys = KeyFile(path)
    assert keys.keys.find("v-key-1") is not None
    keys.start()
    try:
        key_file(path, {"new-key": ("validate", "newcomer")})  # v-key-1 revoked
        for _ in range(100):
            if keys.keys.find("new-key") is not None:
                break
            await asyncio.sleep(0.05)
        assert keys.keys.find("new-key") is not None and keys.keys.find("v-key-1") is None
        path.write_text("not a key line\n")  # an editing mistake locks nobody out, lets nobody in
        assert keys.reload() is False and keys.keys.find("new-key") is not None
    finally:
        await keys.stop()
    with pytest.raises(KeyFileError, match="cannot be read"):
        KeyFile(tmp_path / "missing")


async def test_sighup_rereads_the_key_file(tmp_path: Path) -> None:
    """A reload (SIGHUP, or the config file changed) runs the every-time callbacks: the key file
    is re-read even though no setting changed."""
    path = key_file(tmp_path / "keys")
    keys = KeyFile(path)
    reloads = Reloads()
    reloads.every_time(keys.reload)
    loaded = ServiceConfig("gateway", LogSettings).load([])
    key_file(path, {"new-key": ("validate", "newcomer")})
    await ConfigWatcher(loaded, reloads).reload()
    assert keys.keys.find("new-key") is not None and keys.keys.find("v-key-1") is None


def test_required_without_a_key_file_is_a_start_error() -> None:
    problem = AuthSettings(auth="required").problem()
    assert problem and "FHIRSCHEMA_API_KEYS_FILE" in problem and "FHIRSCHEMA_AUTH=off" in problem
    assert AuthSettings(auth="off").problem() is None


# --- every route ------------------------------------------------------------------------------


def _routes(app: FastAPI) -> Iterator[tuple[str, str, list[Any]]]:
    """(method, path with its parameters filled in, the operation's security) of every route."""
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            yield method.upper(), re.sub(r"\{[^}]+\}", "x", path), op.get("security", [])


async def test_every_route_but_the_open_ones_needs_a_key(app: FastAPI) -> None:
    routes = list(_routes(app))
    assert len(routes) > 20
    async with client(app) as c:
        for method, path, security in routes:
            r = await c.request(method, path)
            if path in OPEN:
                assert r.status_code not in (401, 403) and not security, (method, path, r.status_code)
                continue
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            # The document names each route's scope (any credential for /info), for either scheme.
            assert [list(req) for req in security] == [["ApiKey"], ["Bearer"]], (method, path)
            scopes = security[0]["ApiKey"]
            assert security[1]["Bearer"] == scopes, path
            assert (scopes == []) if path == "/info" else (len(scopes) == 1 and scopes[0] in SCOPES), path
            assert r.headers["www-authenticate"].startswith("ApiKey realm=")
            body = r.json()
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"
        for path in OPEN:  # also those outside the document (/openapi.json, /docs, ...)
            r = await c.get(path)
            assert r.status_code in (200, 503), (path, r.status_code)  # /ready: 503, nothing is up


@pytest.mark.parametrize(
    "method, path, scope",
    [
        ("POST", "/validate", "validate"),
        ("POST", "/Patient/$validate", "validate"),
        ("POST", "/convert/structuredefinition", "convert"),
        ("GET", "/schemas", "schemas:read"),
        ("DELETE", "/schemas/x", "schemas:write"),
        ("GET", "/jobs", "jobs:admin"),
        ("POST", "/dead-letters/1/replay", "dead-letters:admin"),
        ("POST", "/ig/process", "ig:admin"),
        ("GET", "/ig/status", "ig:admin"),
        ("GET", "/ig/schedule", "ig:admin"),
        ("PUT", "/ig/schedule", "ig:admin"),
    ],
)
async def test_a_key_without_the_scope_is_403_naming_it(
    app: FastAPI, method: str, path: str, scope: str
) -> None:
    holder = next(k for k, (scopes, _) in KEYS.items() if scope in scopes.split(","))
    lacking = next(k for k, (scopes, _) in KEYS.items() if scope not in scopes.split(","))
    async with client(app) as c:
        r = await c.request(method, path, headers={"X-API-Key": lacking})
        assert r.status_code == 403, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "forbidden" and f"needs the scope '{scope}'" in issue["diagnostics"]
        assert "www-authenticate" not in r.headers
        r = await c.request(method, path, headers={"X-API-Key": holder})
        assert r.status_code not in (401, 403), (method, path, r.text)  # on to the handler
        r = await c.request(method, path, headers={"X-API-Key": holder + "x"})
        assert r.status_code == 401 and "not valid" in r.json()["issue"][0]["diagnostics"]


async def test_info_needs_any_key_and_off_needs_none(tmp_path: Path) -> None:
    async with client(app_for(tmp_path)) as c:
        assert (await c.get("/info")).status_code == 401
        assert (await c.get("/info", headers={"X-API-Key": "r-key-2"})).status_code == 200
    async with client(app_for(tmp_path, "off")) as c:
        assert (await c.get("/info")).status_code == 200
        assert (await c.get("/jobs", headers={"X-API-Key": "nonsense"})).status_code == 503  # not 401


def test_openapi_names_the_scheme_and_scopes(app: FastAPI) -> None:
    scheme = app.openapi()["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header" and scheme["name"] == "X-API-Key"
    assert all(f"`{sc}`" in scheme["description"] for sc in SCOPES)


def test_websocket_authenticates_before_it_is_accepted(app: FastAPI) -> None:
    """Headers (non-browser clients): refused with the HTTP answer (a denial response)."""
    with TestClient(app) as tc:
        for headers in [{}, {"X-API-Key": "r-key-2"}, {"X-API-Key": "wrong"}]:
            with (
                pytest.raises(WebSocketDenialResponse) as denied,
                tc.websocket_connect("/validate/stream", headers=headers),
            ):
                pass
            response = denied.value
            assert response.status_code in (401, 403)
            assert response.json()["resourceType"] == "OperationOutcome"
            if response.status_code == 401:
                assert response.headers["www-authenticate"].startswith("ApiKey")
        with tc.websocket_connect("/validate/stream", headers={"X-API-Key": "v-key-1"}) as ws:
            assert ws.accepted_subprotocol is None
            ws.send_text('{"subscribe": "no-such-job"}')
            assert "error" in ws.receive_json()  # accepted: NATS is what is missing here


def closed_with(tc: TestClient, protocols: list[str]) -> tuple[int, str]:
    """The close code and reason of a handshake accepted only to be refused (a browser's view)."""
    with tc.websocket_connect("/validate/stream", subprotocols=protocols) as ws:
        assert ws.accepted_subprotocol == "fhirschema.v1"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return closed.value.code, closed.value.reason


def test_websocket_credential_in_the_subprotocols(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    """Browsers: `fhirschema.v1` + `apikey.<key>`; only `fhirschema.v1` is echoed; a refusal is a
    close with 4401 / 4403 and the reason; the query string is refused; the key never logged."""
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as tc:
        with tc.websocket_connect("/validate/stream", subprotocols=["fhirschema.v1", "apikey.v-key-1"]) as ws:
            assert ws.accepted_subprotocol == "fhirschema.v1"
            ws.send_text('{"subscribe": "no-such-job"}')
            assert "error" in ws.receive_json()
        code, reason = closed_with(tc, ["fhirschema.v1"])
        assert code == 4401 and "authentication required" in reason
        code, reason = closed_with(tc, ["fhirschema.v1", "apikey.v-key-1x"])
        assert code == 4401 and "not valid" in reason
        code, reason = closed_with(tc, ["apikey.r-key-2", "fhirschema.v1"])
        assert code == 4403 and "'validate'" in reason and len(reason.encode()) <= 123
        # The credential without the protocol: echoing it would hand the secret back; 400.
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            tc.websocket_connect("/validate/stream", subprotocols=["apikey.v-key-1"]),
        ):
            pass
        assert denied.value.status_code == 400 and "fhirschema.v1" in denied.value.text
        # Never the query string, not even a valid key: it lands in access logs.
        for query in ("api_key=v-key-1", "access_token=v-key-1"):
            with (
                pytest.raises(WebSocketDenialResponse) as denied,
                tc.websocket_connect(f"/validate/stream?{query}", headers={"X-API-Key": "v-key-1"}),
            ):
                pass
            assert denied.value.status_code == 401 and "query string" in denied.value.text
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "gateway.access" in {r.name for r in caplog.records}  # the handshakes were logged
    assert "v-key-1" not in logged and "r-key-2" not in logged


# --- OIDC bearer tokens ---------------------------------------------------------------------------


class Issuer:
    """A local OIDC issuer: discovery and a JWKS over HTTP (a thread), RSA keys to sign with."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.keys = {
            kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")
        }
        self.published = {"k1", "k2"}
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.fetches += 1
                    body = {"keys": [issuer.jwk(kid) for kid in sorted(issuer.published)]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def jwk(self, kid: str) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def token(self, kid: str = "k1", key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": "fhirschema", "sub": "svc-1", "iat": now, "exp": now + 300,
                "scope": "openid validate", **claims}  # fmt: skip
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    iss = Issuer()
    yield iss
    iss.stop()


def oidc_app(tmp_path: Path, issuer: Issuer, cache: float = 60.0) -> FastAPI:
    app = app_for(tmp_path)
    settings = app.state.container.settings
    settings.auth = AuthSettings(
        auth="required",
        oidc_issuer=issuer.url,
        oidc_audience="fhirschema",
        oidc_jwks_cache_seconds=cache,
    )
    return create_app(settings)


async def test_bearer_tokens(tmp_path: Path, issuer: Issuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    app = oidc_app(tmp_path, issuer)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    cases = {
        "missing": (None, "authentication required"),
        "malformed": ("not-a-jwt", "not a JWT"),
        "expired": (issuer.token(exp=now - 120, iat=now - 600), "expired"),
        "wrong audience": (issuer.token(aud="someone-else"), "not for this service"),
        "wrong issuer": (issuer.token(iss="https://evil.example"), "not from the issuer"),
        "wrong signature": (issuer.token(key=other_key), "signature does not verify"),
        "unknown key": (issuer.token(kid="k9", key=other_key), "does not publish"),
        "no expiry": (issuer.token(exp=None), "not valid"),
        "alg none": (
            jwt.encode({"iss": issuer.url, "aud": "fhirschema", "exp": now + 60}, None, algorithm="none"),
            "algorithm 'none'",
        ),
    }
    async with client(app) as c:
        for case, (token, message) in cases.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = await c.post("/validate", json={"resourceType": "Patient"}, headers=headers)
            assert r.status_code == 401, (case, r.status_code, r.text)
            assert message in r.json()["issue"][0]["diagnostics"], (case, r.text)
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith("Bearer realm=") and ("invalid_token" in challenge) == bool(token), (
                case
            )
        # Scopes from `scope` (a string) or `scp` (a list): validate passes on, convert is refused.
        for token in (issuer.token(), issuer.token(scope=None, scp=["validate"])):
            headers = {"Authorization": f"Bearer {token}"}
            r = await c.get("/validate/status/x", headers=headers)
            assert r.status_code == 503, r.text  # past the checks: NATS is what is missing here
            r = await c.post("/convert/structuredefinition", json={}, headers=headers)
            assert r.status_code == 403 and "'convert'" in r.json()["issue"][0]["diagnostics"]
            assert "'svc-1'" in r.json()["issue"][0]["diagnostics"]
        fetched = issuer.fetches
        for _ in range(20):  # the JWKS is cached: checked without a fetch
            assert (
                await c.get("/info", headers={"Authorization": f"Bearer {issuer.token()}"})
            ).status_code == 200
        assert issuer.fetches == fetched

    with TestClient(app) as tc:  # a WebSocket: the Authorization header or `bearer.<JWT>`
        with tc.websocket_connect(
            "/validate/stream", headers={"Authorization": f"Bearer {issuer.token(kid='k2')}"}
        ):
            pass
        token = issuer.token(kid="k2")
        with tc.websocket_connect(
            "/validate/stream", subprotocols=["fhirschema.v1", f"bearer.{token}"]
        ) as ws:
            assert ws.accepted_subprotocol == "fhirschema.v1"
        code, reason = closed_with(tc, ["fhirschema.v1", f"bearer.{token}x"])
        assert code == 4401 and "token" in reason, reason
        code, reason = closed_with(tc, ["fhirschema.v1", f"bearer.{issuer.token(scope='convert')}"])
        assert code == 4403 and "'validate'" in reason
        with (
            pytest.raises(WebSocketDenialResponse),
            tc.websocket_connect(f"/validate/stream?access_token={token}"),
        ):
            pass


async def test_a_revoked_key_is_refused_once_the_cache_expires(tmp_path: Path, issuer: Issuer) -> None:
    async with client(oidc_app(tmp_path, issuer, cache=1.0)) as c:
        valid = {"Authorization": f"Bearer {issuer.token()}"}
        assert (await c.get("/info", headers=valid)).status_code == 200
        # The issuer stops publishing k1 (revoked): refused once the cache (1 s here) expires.
        issuer.published = {"k2"}
        await asyncio.sleep(1.1)
        r = await c.get("/info", headers=valid)
        assert r.status_code == 401 and "does not publish" in r.json()["issue"][0]["diagnostics"]
        r = await c.get("/info", headers={"Authorization": f"Bearer {issuer.token(kid='k2')}"})
        assert r.status_code == 200
        # A key id not seen yet (a rotation) is fetched at once; random ones do not fetch each time.
        fetched = issuer.fetches
        for _ in range(5):
            assert (
                await c.get("/info", headers={"Authorization": f"Bearer {issuer.token(kid='k1')}"})
            ).status_code == 401
        assert issuer.fetches <= fetched + 1  # + 1: the 1 s cache may expire meanwhile


async def test_issuer_unreachable_is_503_not_401(tmp_path: Path, issuer: Issuer) -> None:
    token = issuer.token()
    issuer.stop()
    async with client(oidc_app(tmp_path, issuer)) as c:
        r = await c.get("/info", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503 and r.headers["retry-after"] and "cannot be fetched" in r.text


def test_oidc_settings_that_cannot_work() -> None:
    assert "AUDIENCE" in (AuthSettings(oidc_issuer="https://i").problem() or "")
    assert AuthSettings(oidc_issuer="https://i", oidc_audience="a").problem() is None  # no key file needed
    bad = AuthSettings(oidc_issuer="https://i", oidc_audience="a", oidc_algorithms="RS256,HS256,none")
    assert "HS256, none" in (bad.problem() or "")


# --- CORS ---------------------------------------------------------------------------------------


async def test_cors_none_by_default_preflight_answered_reloadable(tmp_path: Path) -> None:
    app = app_for(tmp_path)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, x-api-key"}  # fmt: skip
    async with client(app) as c:
        r = await c.options("/validate", headers=preflight)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers  # none allowed
        app.state.container.cors.apply(
            CorsSettings(cors_origins="https://app.example, https://admin.example/")
        )
        r = await c.options("/validate", headers=preflight)
        assert r.status_code == 200, r.text  # answered before any credential is asked for
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert {"x-api-key", "content-type"} <= {
            h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")
        }
        assert (
            "POST" in r.headers["access-control-allow-methods"]
            and r.headers["access-control-max-age"] == "600"
        )
        r = await c.options("/validate", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        # A refusal is readable by the page's script: the origin and the exposed headers are there.
        r = await c.post("/validate", json={}, headers={"Origin": "https://admin.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://admin.example"
        assert "www-authenticate" in r.headers["access-control-expose-headers"].lower()
        assert "ratelimit-remaining" in r.headers["access-control-expose-headers"].lower()
        app.state.container.cors.apply(CorsSettings())  # reloaded: none again
        assert (await c.options("/validate", headers=preflight)).status_code == 405
