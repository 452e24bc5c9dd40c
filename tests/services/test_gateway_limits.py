"""Rate limits (the `limits` library: memory here, real Valkey below) and load shedding (a real
JetStream backlog): 429 with Retry-After and RateLimit-* headers, counted across replicas,
reloadable; 503 with Retry-After while the validators are behind."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from gateway.app import create_app
from gateway.service.auth import Principal
from gateway.service.rate_limits import LoadShedder, RateLimits, TooManyRequests
from limits.aio.storage import MemoryStorage
from nats.aio.client import Client

from fhirschema_bus import subjects as s
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import AuthSettings, NatsSettings, RateLimitSettings, RedisSettings
from tests.services.test_gateway_auth import app_for, key_file

ALICE = Principal("alice", frozenset({"validate"}), "api-key")


async def test_a_limit_per_caller_and_per_scope() -> None:
    limits = RateLimits(RateLimitSettings(rate_limit="3/minute", rate_limit_scopes={"convert": "1/minute"}),
                        MemoryStorage)  # fmt: skip
    remaining = [(await limits.check(ALICE, ["validate"])) for _ in range(3)]
    assert [v.remaining for v in remaining if v] == [2, 1, 0] and remaining[0] and remaining[0].limit == 3
    with pytest.raises(TooManyRequests) as e:
        await limits.check(ALICE, ["validate"])
    assert e.value.status == 429 and "alice" in e.value.message and "3 per 1 minute" in e.value.message
    headers = e.value.headers
    assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 60 and headers["RateLimit-Reset"] == headers["Retry-After"]
    # Another caller has its own window; a scope with its own limit is counted apart.
    assert await limits.check(Principal("bob", frozenset(), "api-key"), []) is not None
    assert (v := await limits.check(ALICE, ["convert"])) is not None and v.limit == 1
    with pytest.raises(TooManyRequests, match="scope 'convert'"):
        await limits.check(ALICE, ["convert"])
    # A reload: the new limits apply to the next request.
    limits.apply(RateLimitSettings(rate_limit="100/minute"))
    assert (v := await limits.check(ALICE, ["convert"])) is not None and v.limit == 100
    limits.apply(RateLimitSettings())
    assert not limits.active and await limits.check(ALICE, ["validate"]) is None


async def test_storage_down_lets_requests_pass(caplog: pytest.LogCaptureFixture) -> None:
    from limits.aio.storage import RedisStorage

    limits = RateLimits(RateLimitSettings(rate_limit="1/minute"),
                        lambda: RedisStorage("async+redis://127.0.0.1:1/0", implementation="redispy"))  # fmt: skip
    for _ in range(3):
        assert await limits.check(ALICE, ["validate"]) is None
    assert caplog.text.count("rate limits not counted") == 1


def test_bad_limits_are_start_errors() -> None:
    with pytest.raises(ValueError, match="not a rate limit like 600/minute"):
        RateLimitSettings(rate_limit="lots")
    with pytest.raises(ValueError, match="scope convert"):
        RateLimitSettings(rate_limit_scopes={"convert": "5 a day"})


def test_shedding() -> None:
    class Backlog:
        pending = 0

    backlog = Backlog()
    shedder = LoadShedder(RateLimitSettings(shed_validate_pending=10, shed_retry_after_seconds=7), backlog)
    shedder.check()
    backlog.pending = 11
    with pytest.raises(Exception) as e:
        shedder.check()
    assert getattr(e.value, "status", None) == 503 and e.value.headers == {"Retry-After": "7"}  # type: ignore[attr-defined]
    shedder.apply(RateLimitSettings())  # 0: never
    shedder.check()


# --- the gateway on real Valkey and NATS ----------------------------------------------------------


def limited_app(
    tmp_path: Path, redis_url: str, nats_url: str = "nats://127.0.0.1:1", **limits: Any
) -> FastAPI:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = app_for(tmp_path).state.container.settings
    settings.redis = RedisSettings(url=redis_url)
    settings.nats = NatsSettings(url=nats_url)
    settings.auth = AuthSettings(auth="required", api_keys_file=key_file(tmp_path / "keys"))
    settings.rate_limit = RateLimitSettings(**limits)
    return create_app(settings)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")


async def test_rate_limit_on_valkey_shared_by_replicas(tmp_path: Path, redis_server: RunningServer) -> None:
    """Two gateways on one Valkey count one window per key: 401, 403, 429 and 200 as an operator
    sees them."""
    one = limited_app(tmp_path / "a", redis_server.url, rate_limit="3/minute")
    two = limited_app(tmp_path / "b", redis_server.url, rate_limit="3/minute")
    reader = {"X-API-Key": "r-key-2"}
    async with client(one) as a, client(two) as b:
        assert (await a.get("/info")).status_code == 401  # not counted: who is it?
        seen = []
        for c in (a, b, a):
            r = await c.get("/info", headers=reader)
            assert r.status_code == 200, r.text
            seen.append((r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]))
            assert 1 <= int(r.headers["ratelimit-reset"]) <= 60
        assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
        r = await b.get("/info", headers=reader)
        assert r.status_code == 429 and r.json()["issue"][0]["code"] == "throttled"
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["ratelimit-remaining"] == "0"
        assert (await a.get("/info", headers={"X-API-Key": "a-key-3"})).status_code == 200  # another key
        # Reloaded (SIGHUP / config file): the limit in force changes without a restart.
        one.state.container.rate_limits.apply(RateLimitSettings(rate_limit="100/minute"))
        assert (await a.get("/info", headers=reader)).status_code == 200


async def test_validations_are_shed_while_the_validators_are_behind(
    tmp_path: Path, redis_server: RunningServer, nats_server: RunningServer, nc: Client
) -> None:
    """No validator runs here: five validate messages stay pending on the real stream."""
    js = nc.jetstream()
    for i in range(5):
        await js.publish(s.VALIDATE_ONE, b"{}", headers={"Nats-Msg-Id": f"shed-{i}-{time.time()}"})
    app = limited_app(tmp_path, redis_server.url, nats_server.url, shed_validate_pending=3)
    validator = {"X-API-Key": "v-key-1"}
    async with app.router.lifespan_context(app), client(app) as c:
        backlog = app.state.container.backlog
        deadline = time.monotonic() + 10
        while backlog.pending < 5:
            assert time.monotonic() < deadline, backlog.pending
            await asyncio.sleep(0.1)
        for path in ("/validate", "/$validate", "/Patient/$validate", "/validate/batch"):
            r = await c.post(path, json={"resourceType": "Patient"}, headers=validator)
            assert r.status_code == 503 and r.headers["retry-after"] == "5", (path, r.text)
            assert "validators are behind: 5" in r.json()["issue"][0]["diagnostics"]
        assert (await c.post("/validate", json={})).status_code == 401  # who, before how busy
        r = await c.get("/validate/status/nope", headers=validator)  # reading is never shed
        assert r.status_code == 404
