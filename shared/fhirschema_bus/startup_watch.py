"""What `make up` says about readiness: when the stack can validate, and loudly when it cannot.

`StartupWatch.lines(info)` takes the gateway's `GET /info` (its `readiness`) and returns what the
console should say now: an ERROR with what to do the moment a configured package fails to be
ingested, "ready" once a validator replica holds the configured packages, and while neither, a
reminder of what is missing every `remind_seconds`. Pure (the clock is a parameter): tested
without a stack.
"""

from __future__ import annotations

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

    def lines(self, info: dict[str, Any], at: float) -> list[str]:
        readiness = info.get("readiness") or {}
        out: list[str] = []
        failures = readiness.get("ingest_failures") or {}
        for package, error in sorted(failures.items()):
            if package not in self.reported:
                self.reported.add(package)
                out.append(f"ERROR: {package} could not be ingested: {error}\n  {WHAT_TO_DO}")
        if readiness.get("ready"):
            if not self.ready:
                self.ready = True
                packages = ", ".join(info.get("configured_packages") or []) or "no packages configured"
                out.append(f"ready to validate after {at - self.started:.1f}s ({packages})")
            return out
        if self.ready:  # was ready, is not any more
            self.ready = False
            out.append(f"NOT ready to validate any more: {readiness.get('reason', '?')}")
            self._reminded = at
        elif at - max(self._reminded, self.started) >= self.remind_seconds:
            self._reminded = at
            out.append(
                f"not ready to validate yet ({at - self.started:.0f}s): {readiness.get('reason', '?')}"
            )
        return out
