"""What `make up` says about readiness: when the stack can validate, and loudly when it cannot.

`StartupWatch.lines(ready)` takes the body of the gateway's `GET /ready` (open: `make up` may run
with FHIRSCHEMA_AUTH=required, and /info needs a credential) and returns what the console should
say now: an ERROR with what to do the moment a configured package fails to be
ingested, "ready" once a validator replica holds the configured packages, and while neither, a
reminder of what is missing every `remind_seconds`. Pure (the clock is a parameter): tested
without a stack.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

WHAT_TO_DO = (
    "what to do: make the package registries reachable, or load packages from a folder of .tgz "
    "files: FHIRSCHEMA_PACKAGE_SOURCES=../shared/fhir/packages make up (see docs/configuration.md)"
)


@dataclass
class StartupWatch:
    started: float
    remind_seconds: float = 20.0
    ready: bool = False
    reported: set[str] = field(default_factory=set)  # ingest failures already said
    _reminded: float = 0.0

    def lines(self, ready: dict[str, Any], at: float) -> list[str]:
        checks = ready.get("checks") or {}
        validators = checks.get("validators") or {}
        out: list[str] = []
        failures = validators.get("ingest_failures") or {}
        for package, error in sorted(failures.items()):
            if package not in self.reported:
                self.reported.add(package)
                out.append(f"ERROR: {package} could not be ingested: {error}\n  {WHAT_TO_DO}")
        if ready.get("status") == "ready":
            if not self.ready:
                self.ready = True
                packages = ", ".join(validators.get("packages") or []) or "no packages configured"
                out.append(f"ready to validate after {at - self.started:.1f}s ({packages})")
            return out
        if self.ready:  # was ready, is not any more
            self.ready = False
            out.append(f"NOT ready to validate any more: {_reason(checks)}")
            self._reminded = at
        elif at - max(self._reminded, self.started) >= self.remind_seconds:
            self._reminded = at
            out.append(f"not ready to validate yet ({at - self.started:.0f}s): {_reason(checks)}")
        return out


def _reason(checks: dict[str, Any]) -> str:
    """Why /ready is not ready: the error of each check that failed (NATS, S3, Redis, validators)."""
    failed = [f"{name}: {c.get('error', '?')}" for name, c in checks.items() if not c.get("ok")]
    return "; ".join(failed) or "?"


def get_json(url: str) -> dict[str, Any]:
    """The JSON body of a GET, also of an error status (/ready's 503 says what is missing)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    data = json.loads(body)
    return data if isinstance(data, dict) else {}
