"""Gateway errors and their JSON rendering (FHIR OperationOutcome for every error)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fhirschema.jsoninput import JsonInputError

FHIR_JSON = "application/fhir+json"
log = logging.getLogger("gateway")

_ISSUE_CODES = {
    400: "structure",
    401: "login",
    403: "forbidden",
    429: "throttled",
    431: "too-long",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    503: "transient",
    504: "timeout",
}


class GatewayError(Exception):
    """An error with an HTTP status and a clear message; rendered as an OperationOutcome."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
        outcome: dict[str, Any] | None = None,  # the body, when it is more than one message
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra or {}
        self.outcome = outcome
        self.headers = dict(headers or {})


class BadRequest(GatewayError):
    status = 400


class InvalidInput(BadRequest):
    """The body is not JSON, or nested too deeply to validate: 400 with the OperationOutcome the
    CLI gives for the same bytes (`fhirschema.jsoninput`: fatal issue with line and column)."""

    def __init__(self, error: JsonInputError, where: str = ""):
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + error.issue().message, outcome=error.result().to_outcome())
        self.error = error


class Unauthorized(GatewayError):
    """No credential, or one that is not valid: 401 with WWW-Authenticate (set by the caller)."""

    status = 401


class Forbidden(GatewayError):
    """A valid credential without the scope the route needs: 403 naming the scope."""

    status = 403


class NotFound(GatewayError):
    status = 404


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class Unprocessable(GatewayError):
    status = 422


class BusUnavailable(GatewayError):
    """NATS (or another service behind it) is unreachable: 503, with Retry-After when known."""

    status = 503


class Timeout(GatewayError):
    status = 504


def operation_outcome(message: str, status: int, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": severity, "code": _ISSUE_CODES.get(status, "exception"), "diagnostics": message}
        ],
    }


def error_response(
    message: str,
    status: int,
    extra: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    outcome: dict[str, Any] | None = None,
) -> Response:
    body = dict(outcome) if outcome is not None else operation_outcome(message, status)
    if extra:
        body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        headers = dict(exc.headers)
        if "location" in exc.extra:
            headers["Location"] = exc.extra["location"]
        return error_response(exc.message, exc.status, exc.extra, headers, exc.outcome)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(str(exc.detail), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        # Never a 500 text/plain: NATS failing under a request is a 503 the client can retry.
        if isinstance(exc, (TimeoutError, ConnectionError, nats.errors.Error, nats.js.errors.Error)):
            message = f"NATS is unavailable ({exc or type(exc).__name__}); retry later"
            return error_response(message, 503, headers={"Retry-After": "5"})
        log.exception("unexpected error")
        return error_response(f"internal error ({type(exc).__name__}); see the gateway's log", 500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error_response("invalid request: " + "; ".join(parts), 400)
