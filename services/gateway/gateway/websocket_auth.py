"""The credential a WebSocket handshake carries, and how a refused one is told.

A browser cannot set X-API-Key or Authorization on a WebSocket; what it can set is the list of
subprotocols (`new WebSocket(url, ["fhirschema.v1", "apikey." + key])`), sent as the
`Sec-WebSocket-Protocol` header. So the credential may ride there as `apikey.<key>` or
`bearer.<JWT>` beside the protocol `fhirschema.v1`, which is the only one echoed back (a browser
fails a handshake whose answer names no protocol it offered; the secret must not come back).
Never in the query string: a URL lands in access logs and proxy logs, a header does not.

A refusal is told as HTTP would tell it (a denial response: 401 / 403 / ... with the
OperationOutcome) to clients that can read it. A browser cannot: its WebSocket API shows a failed
handshake as close code 1006 and nothing else. So when `fhirschema.v1` was offered (or the server
has no denial responses) the handshake is accepted and closed at once with code 4000 + status
(4401, 4403, 4429, 4503, ...) and the message as the reason; no frame is read before that.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.websockets import WebSocket

from gateway.errors import BadRequest, GatewayError, error_response

PROTOCOL = "fhirschema.v1"
API_KEY_PREFIX, BEARER_PREFIX = "apikey.", "bearer."
# The query parameters an earlier gateway read credentials from: refused now, saying why.
QUERY_CREDENTIALS = ("api_key", "access_token")
_REASON_BYTES = 123  # RFC 6455 §5.5: a close frame's payload is at most 125 bytes (2 for the code)


@dataclass(frozen=True)
class Offered:
    """What a handshake presents: at most one API key and one bearer token, and the protocol to
    echo (PROTOCOL when offered, else none)."""

    api_key: str | None
    bearer: str | None
    protocol: str | None
    in_query: bool  # a credential in the query string (refused when auth is on)


def subprotocols(ws: WebSocket) -> list[str]:
    return [str(p) for p in ws.scope.get("subprotocols") or ()]


def offered(ws: WebSocket) -> Offered:
    """The handshake's credential: headers first (non-browser clients), then subprotocols."""
    protocols = subprotocols(ws)
    api_key = ws.headers.get("x-api-key") or None
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    in_protocols = False
    for p in protocols:
        if p.startswith(API_KEY_PREFIX):
            api_key, in_protocols = api_key or p[len(API_KEY_PREFIX) :] or None, True
        elif p.startswith(BEARER_PREFIX):
            bearer, in_protocols = bearer or p[len(BEARER_PREFIX) :] or None, True
    if in_protocols and PROTOCOL not in protocols:
        # Answering with no protocol would fail the handshake in a browser; echoing the
        # credential would hand the secret back. Say what to send instead.
        raise BadRequest(f"a credential in Sec-WebSocket-Protocol needs the protocol {PROTOCOL!r} beside it")
    return Offered(
        api_key=api_key,
        bearer=bearer,
        protocol=PROTOCOL if PROTOCOL in protocols else None,
        in_query=any(q in ws.query_params for q in QUERY_CREDENTIALS),
    )


def close_reason(message: str) -> str:
    """`message` cut to what a close frame holds, on a character boundary."""
    raw = message.encode()
    if len(raw) <= _REASON_BYTES:
        return message
    return raw[: _REASON_BYTES - 3].decode(errors="ignore") + "..."


async def refuse(ws: WebSocket, error: GatewayError) -> None:
    """Refuse a WebSocket that is not accepted yet, in the way its client can read."""
    browser = PROTOCOL in subprotocols(ws)
    if not browser and "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error_response(error.message, error.status, headers=error.headers))
        return
    await ws.accept(subprotocol=PROTOCOL if browser else None)
    await ws.close(code=4000 + error.status, reason=close_reason(error.message))
