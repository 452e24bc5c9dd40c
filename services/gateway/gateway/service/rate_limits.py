"""Rate limits per caller, counted with the `limits` library in shared storage (Redis in the
gateway, so every replica counts the same window; memory in unit tests).

A request is counted against its route's scope's own limit when one is configured
(`rate_limit_scopes`), else against the caller's default limit (`rate_limit`), which all its
other requests share. The answer carries `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset` (seconds until the window frees a request); past the limit it is a 429 with
`Retry-After` as well. If the storage cannot be reached the request passes (with a warning at
most every 30 s): a Redis outage must not take the gateway down with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fhirschema_bus.settings import RateLimitSettings
from gateway.errors import BusUnavailable, GatewayError
from gateway.service.auth import Principal

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.aio.storage import Storage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

log = logging.getLogger("gateway.rate_limit")
WARN_EVERY = 30.0


class TooManyRequests(GatewayError):
    status = 429


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimits:
    """`storage` is called, and `limits` imported, only once a limit is set (at start or by a
    reload): without limits (the default) the gateway starts without the library (about 25 ms
    of CPU)."""

    def __init__(self, settings: RateLimitSettings, storage: Callable[[], Storage]) -> None:
        self._storage = storage
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._warned = -math.inf
        self.default: list[RateLimitItem] = []
        self.per_scope: dict[str, list[RateLimitItem]] = {}
        self.apply(settings)

    def apply(self, settings: RateLimitSettings) -> None:
        """The limits in force (at start and on a reload)."""
        if not settings.rate_limit and not settings.rate_limit_scopes:
            self.default, self.per_scope = [], {}
            return
        from limits import parse_many

        self.default = parse_many(settings.rate_limit) if settings.rate_limit else []
        self.per_scope = {scope: parse_many(limit) for scope, limit in settings.rate_limit_scopes.items()}

    @property
    def limiter(self) -> SlidingWindowCounterRateLimiter:
        if self._limiter is None:
            from limits.aio.strategies import SlidingWindowCounterRateLimiter

            self._limiter = SlidingWindowCounterRateLimiter(self._storage())
        return self._limiter

    @property
    def active(self) -> bool:
        return bool(self.default or self.per_scope)

    async def check(self, principal: Principal, scopes: Sequence[str]) -> Verdict | None:
        """Count the request; None when no limit applies. Raises TooManyRequests past a limit."""
        scope = next((sc for sc in scopes if sc in self.per_scope), None)
        items = self.per_scope[scope] if scope is not None else self.default
        if not items:
            return None
        key = (principal.via, principal.name, scope or "*")
        try:
            verdicts = []
            refused: tuple[Verdict, RateLimitItem] | None = None
            for item in items:
                allowed = await self.limiter.hit(item, *key)
                stats = await self.limiter.get_window_stats(item, *key)
                reset = max(1, math.ceil(stats.reset_time - time.time()))
                verdict = Verdict(item.amount, max(0, stats.remaining), reset)
                verdicts.append(verdict)
                if not allowed and refused is None:
                    refused = verdict, item
        except Exception as e:  # the storage is down: let the request through, say so
            now = time.monotonic()
            if now - self._warned > WARN_EVERY:
                log.warning("rate limits not counted (requests pass): %s", e or type(e).__name__)
                self._warned = now
            return None
        if refused is not None:
            verdict, item = refused
            what = f"on routes of scope {scope!r}" if scope else "on every route"
            raise TooManyRequests(
                f"rate limit reached: {item} {what} for {principal.name!r}; "
                f"retry after {verdict.reset_seconds} s",
                headers={**verdict.headers(), "Retry-After": str(verdict.reset_seconds)},
            )
        return min(verdicts, key=lambda v: v.remaining)


class Backlog(Protocol):
    @property
    def pending(self) -> int: ...


class LoadShedder:
    """New validations are refused (503 + Retry-After) while the validators are too far behind."""

    def __init__(self, settings: RateLimitSettings, backlog: Backlog) -> None:
        self.backlog = backlog
        self.apply(settings)

    def apply(self, settings: RateLimitSettings) -> None:
        self.bound = settings.shed_validate_pending
        self.retry_after = settings.shed_retry_after_seconds

    def check(self) -> None:
        if self.bound and (pending := self.backlog.pending) > self.bound:
            raise BusUnavailable(
                f"the validators are behind: {pending} validate messages wait (the gateway takes new "
                f"validations below {self.bound}); retry after {self.retry_after} s",
                headers={"Retry-After": str(self.retry_after)},
            )
