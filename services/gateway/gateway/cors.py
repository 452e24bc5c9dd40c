"""CORS for browser clients: the origins allowed (FHIRSCHEMA_CORS_ORIGINS, none by default) get
Starlette's CORSMiddleware — preflights answered before any credential is asked for (a
preflight carries none), and the headers a script needs to read (rate limits, the verdict, job
ids) exposed. Reloadable: a reload changes the policy, and the next request builds the
middleware anew from it."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirschema_bus.settings import CorsSettings

METHODS = ["GET", "POST", "PUT", "DELETE"]
HEADERS = ["Content-Type", "X-API-Key", "Authorization"]
EXPOSED = [
    "Location", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
    "X-Validation-Result", "X-Job-Id", "X-Job-State", "X-Total-Count", "X-Schema-Stored", "WWW-Authenticate",
]  # fmt: skip


class CorsPolicy:
    """The origins in force (the container holds it; reloads apply to it)."""

    def __init__(self, settings: CorsSettings) -> None:
        self.version = 0
        self.apply(settings)

    def apply(self, settings: CorsSettings) -> None:
        self.origins = settings.origin_list()
        self.max_age = settings.cors_max_age_seconds
        self.version += 1


class ReloadableCors:
    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy
        self._built: tuple[int, ASGIApp] = (-1, app)

    def _build(self) -> ASGIApp:
        if not self.policy.origins:
            return self.app  # no origin allowed: no CORS headers, a preflight is a 405
        return CORSMiddleware(
            self.app, allow_origins=self.policy.origins, allow_methods=METHODS, allow_headers=HEADERS,
            expose_headers=EXPOSED, max_age=self.policy.max_age,
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version, inner = self._built
        if version != self.policy.version:
            inner = self._build()
            self._built = (self.policy.version, inner)
        await inner(scope, receive, send)
