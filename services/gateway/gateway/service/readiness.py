"""Can the stack give a verdict now? The gateway answers no validation request until it can.

The rule (`assess`, pure): some validator replica has sent a fresh heartbeat saying it is ready
(its own readiness: the core and the configured packages loaded from the repository, the core
types resolving, materialise.py), and every configured package (FHIRSCHEMA_PACKAGES) is held
by a ready replica. A replica that is not ready pulls no message, so without this a request
would wait in JetStream until its timeout; with it, the caller learns why at once.

When not ready, the reason names what is missing: packages not in the repository yet, a
start-up ingest that failed (ig-ingest's heartbeat carries its failures) and what to do about
it, replicas that are loading, or no replica at all.

`ReadinessGate` keeps the last assessment: while ready, a request costs nothing (the snapshot
is refreshed in the background at most every `refresh_seconds`); while not ready, a request
waits up to `wait_seconds`, re-reading every 0.2 s, then gets `NotReady` (503, Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from fhirschema_bus.contracts import Heartbeat, RepositoryState, now
from gateway.errors import GatewayError

RETRY_AFTER_SECONDS = 5
SOURCES_HINT = (
    "check FHIRSCHEMA_PACKAGE_SOURCES (registries the ig-ingest service can reach, or a folder of "
    ".tgz packages, e.g. FHIRSCHEMA_PACKAGE_SOURCES=../shared/fhir/packages) and see ig-ingest's log"
)


class ReadinessSource(Protocol):
    """What the assessment reads (adapters/readiness.py: the KV buckets on NATS)."""

    async def repository(self) -> RepositoryState: ...
    async def heartbeats(self) -> list[Heartbeat]: ...


@dataclass(frozen=True)
class Assessment:
    ready: bool
    reason: str = ""
    missing: list[str] = field(default_factory=list)  # configured packages not usable yet
    replicas: int = 0  # validator replicas ready
    registered: list[str] = field(default_factory=list)  # packages in the repository
    ingest_failures: dict[str, str] = field(default_factory=dict)  # package -> why

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready, "reason": self.reason, "missing": self.missing,
            "validators_ready": self.replicas, "registered": self.registered,
            "ingest_failures": self.ingest_failures,
        }  # fmt: skip


def assess(
    required: Sequence[str],
    state: RepositoryState,
    beats: Sequence[Heartbeat],
    *,
    at: datetime | None = None,
    fresh_within: float = 35.0,
) -> Assessment:
    at = at or now()
    fresh = [b for b in beats if at - b.at <= timedelta(seconds=fresh_within)]
    validators = [b for b in fresh if b.service == "validator"]
    ready = [b for b in validators if b.detail.get("ready") is True]
    held = {str(p) for b in ready for p in b.detail.get("packages") or ()}
    missing = [p for p in required if p not in held]
    registered = sorted(p.package for p in state.packages)
    failures: dict[str, str] = {}
    for b in fresh:
        if b.service == "ig-ingest" and isinstance(b.detail.get("failed"), dict):
            failures.update({str(k): str(v) for k, v in b.detail["failed"].items() if k not in registered})
    common = {"registered": registered, "ingest_failures": failures, "replicas": len(ready)}
    if ready and not missing:
        return Assessment(True, **common)  # type: ignore[arg-type]
    reasons: list[str] = []
    for pkg in missing:
        if pkg in failures:
            reasons.append(f"{pkg} could not be ingested ({failures[pkg]}): {SOURCES_HINT}")
        elif pkg not in registered:
            reasons.append(
                f"{pkg} is not in the repository yet (being ingested, or ig-ingest is not running)"
            )
        else:
            reasons.append(f"{pkg} is in the repository, no validator replica has loaded it yet")
    if not validators:
        reasons.append("no validator replica is running (none sent a heartbeat)")
    for b in validators:
        if b not in ready:
            reasons.append(f"validator {b.instance}: {b.detail.get('reason') or 'starting'}")
    return Assessment(False, "; ".join(reasons), missing, **common)  # type: ignore[arg-type]


class NotReady(GatewayError):
    """503 with Retry-After: the stack cannot give a verdict yet (never a guess)."""

    status = 503

    def __init__(self, assessment: Assessment, waited: float):
        message = (
            f"not ready to validate (waited {waited:.1f} s): {assessment.reason}. "
            f"Nothing was validated; retry in {RETRY_AFTER_SECONDS} s (GET /ready says when)"
        )
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.assessment = assessment


class ReadinessGate:
    def __init__(
        self,
        source: ReadinessSource,
        required: Sequence[str],
        *,
        wait_seconds: float = 5.0,
        refresh_seconds: float = 2.0,
        fresh_within: float = 35.0,
    ) -> None:
        self.source = source
        self.required = list(required)
        self.wait_seconds = wait_seconds
        self.refresh_seconds = refresh_seconds
        self.fresh_within = fresh_within
        self._last: Assessment | None = None
        self._at = 0.0
        self._refreshing: asyncio.Task[Assessment] | None = None

    async def current(self, *, fresh: bool = False) -> Assessment:
        """The assessment; re-read when asked (`fresh`), when none is known, or when the last
        one said not ready; a ready one older than refresh_seconds is renewed in the background."""
        last = self._last
        if last is None or fresh or not last.ready:
            return await self.refresh()
        if time.monotonic() - self._at > self.refresh_seconds:
            with contextlib.suppress(Exception):
                self._refresh_task()
        return last

    def _refresh_task(self) -> asyncio.Task[Assessment]:
        if self._refreshing is None or self._refreshing.done():
            task = asyncio.get_running_loop().create_task(self._read())
            # A background refresh that fails (NATS reconnecting) is retried by the next caller.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._refreshing = task
        return self._refreshing

    async def refresh(self) -> Assessment:
        """One read at a time, shared by every caller waiting for it."""
        return await asyncio.shield(self._refresh_task())

    async def _read(self) -> Assessment:
        state, beats = await asyncio.gather(self.source.repository(), self.source.heartbeats())
        self._last = assess(self.required, state, beats, fresh_within=self.fresh_within)
        self._at = time.monotonic()
        return self._last

    async def admit(self) -> None:
        """Return when a verdict can be given; NotReady after waiting `wait_seconds`."""
        last = self._last
        if last is not None and last.ready:
            await self.current()  # at most a background refresh
            return
        t0 = time.monotonic()
        while True:
            assessment = await self.refresh()
            if assessment.ready:
                return
            waited = time.monotonic() - t0
            if waited >= self.wait_seconds:
                raise NotReady(assessment, waited)
            await asyncio.sleep(min(0.2, self.wait_seconds - waited))
