"""Authentication and scopes as FastAPI dependencies: `Depends`-free routes stay so, and every
route names its scope (`dependencies=[require(VALIDATE)]`), which also puts the security
schemes into the OpenAPI document.

Open without a credential: /health, /ready (probes), /metrics (Prometheus scrapes it; its labels
carry no resource ids or caller data — restrict it by network), /metadata (a FHIR client reads
the CapabilityStatement before it authenticates), /docs, /redoc and /openapi(.json) (the API's
description, no data). /info needs a credential, with any scope: it names the instances.

A WebSocket authenticates the same way, before it is accepted: the X-API-Key or Authorization
header, or for browsers (which cannot set headers on a WebSocket) the subprotocols
`fhirschema.v1` + `apikey.<key>` / `bearer.<JWT>` (gateway.websocket_auth); never the query
string. A refused WebSocket gets the same 401 / 403 OperationOutcome as HTTP (a denial response),
or, offered `fhirschema.v1`, an accept closed at once with 4401 / 4403 and the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from gateway import websocket_auth
from gateway.errors import GatewayError
from gateway.service.auth import SCOPE_DESCRIPTIONS, Principal

if TYPE_CHECKING:
    from gateway.bootstrap import Container

API_KEY = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="An API key; its SHA-256 and scopes are in the gateway's key file. Scopes: "
    + "; ".join(f"`{k}`: {v}" for k, v in SCOPE_DESCRIPTIONS.items()),
    auto_error=False,  # the 401 is ours: an OperationOutcome with WWW-Authenticate
)


BEARER = HTTPBearer(
    scheme_name="Bearer",
    bearerFormat="JWT",
    description="An OAuth2 / OIDC access token (JWT) from the configured issuer, for this audience; "
    "its scopes in `scope` or `scp`.",
    auto_error=False,
)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def _container(conn: HTTPConnection) -> Container:
    return conn.app.state.container  # type: ignore[no-any-return]


async def check(
    conn: HTTPConnection, scopes: list[str], api_key: str | None, bearer: str | None
) -> Principal:
    """Who, whether it may (401 / 403), and whether it may now (429)."""
    c = _container(conn)
    principal = await c.auth.authenticate(api_key, bearer, client_address(conn))
    c.auth.authorize(principal, scopes)
    conn.state.principal = principal
    if c.rate_limits.active and (verdict := await c.rate_limits.check(principal, scopes)) is not None:
        conn.state.rate_limit = verdict.headers()  # added to the response (access.RequestObserver)
    return principal


async def principal(
    security_scopes: SecurityScopes,
    conn: HTTPConnection,
    api_key: Annotated[str | None, Security(API_KEY)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Principal:
    """Who calls, with the scopes the route (and its router) asked for; 401 / 403 otherwise."""
    return await check(conn, security_scopes.scopes, api_key, bearer.credentials if bearer else None)


def require(*scopes: str) -> Any:
    """A route's (or router's) dependency: a credential holding `scopes` (none: any credential)."""
    return Security(principal, scopes=list(scopes))


async def authorize(conn: HTTPConnection, *scopes: str) -> Principal:
    """What `require(*scopes)` checks, called by a hot route itself: the headers read as
    APIKeyHeader and HTTPBearer (auto_error off) read them, without the dependency machinery."""
    scheme, token = get_authorization_scheme_param(conn.headers.get("authorization"))
    bearer = token if scheme.lower() == "bearer" and token else None
    return await check(conn, list(scopes), conn.headers.get("x-api-key") or None, bearer)


def security_requirement(*scopes: str) -> list[dict[str, list[str]]]:
    """The OpenAPI `security` of a route that calls `authorize` (as `require` would declare it)."""
    return [{API_KEY.scheme_name: list(scopes)}, {BEARER.scheme_name: list(scopes)}]


async def shed(conn: HTTPConnection) -> None:
    """New validations only: 503 + Retry-After while the validators are too far behind."""
    _container(conn).shedder.check()


SHED = Depends(shed)


async def accept_websocket(ws: WebSocket, *scopes: str) -> Principal | None:
    """Authenticate a WebSocket before accepting it (and shed it while the validators are
    behind); None when refused (the 401 / 403 / 429 / 503 is sent).
    The credential: headers, or `Sec-WebSocket-Protocol` for browsers (gateway.websocket_auth)."""
    try:
        creds = websocket_auth.offered(ws)
        if creds.in_query and _container(ws).auth.required:
            raise _container(ws).auth.unauthorized(
                "a credential in the query string is not accepted (URLs land in access logs): send "
                f"Sec-WebSocket-Protocol: {websocket_auth.PROTOCOL}, apikey.<key> (or bearer.<token>), "
                "or the X-API-Key / Authorization header"
            )
        found = await check(ws, list(scopes), creds.api_key, creds.bearer)
        _container(ws).shedder.check()
    except GatewayError as e:
        await websocket_auth.refuse(ws, e)
        return None
    await ws.accept(subprotocol=creds.protocol)
    return found
