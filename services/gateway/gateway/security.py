"""Authentication and scopes as FastAPI dependencies: `Depends`-free routes stay so, and every
route names its scope (`dependencies=[require(VALIDATE)]`), which also puts the security
schemes into the OpenAPI document.

Open without a credential: /health, /ready (probes), /metrics (Prometheus scrapes it; its labels
carry no resource ids or caller data — restrict it by network), /metadata (a FHIR client reads
the CapabilityStatement before it authenticates), /docs, /redoc and /openapi(.json) (the API's
description, no data). /info needs a credential, with any scope: it names the instances.

A WebSocket authenticates the same way, before it is accepted: the X-API-Key or Authorization
header, or `?api_key=` / `?access_token=` for clients that cannot set headers on a WebSocket
(browsers). A refused WebSocket
gets the same 401 / 403 OperationOutcome as HTTP (a denial response).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from gateway.errors import GatewayError, error_response
from gateway.service.auth import SCOPE_DESCRIPTIONS, Authenticator, Principal

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


def _authenticator(conn: HTTPConnection) -> Authenticator:
    return conn.app.state.container.auth  # type: ignore[no-any-return]


async def check(
    conn: HTTPConnection, scopes: list[str], api_key: str | None, bearer: str | None
) -> Principal:
    auth = _authenticator(conn)
    principal = await auth.authenticate(api_key, bearer, client_address(conn))
    auth.authorize(principal, scopes)
    conn.state.principal = principal
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


async def accept_websocket(ws: WebSocket, *scopes: str) -> Principal | None:
    """Authenticate a WebSocket before accepting it; None when refused (the 401/403 is sent)."""
    api_key = ws.headers.get("x-api-key") or ws.query_params.get("api_key")
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ws.query_params.get("access_token")
    try:
        found = await check(ws, list(scopes), api_key, bearer or None)
    except GatewayError as e:
        response = error_response(e.message, e.status, headers=e.headers)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(response)
        else:  # a server without denial responses: the handshake fails (HTTP 403)
            await ws.close(code=1008, reason=e.message[:120])
        return None
    await ws.accept()
    return found
