"""Findings: what a rule module returns; the walk turns them into issues at its current path."""

from __future__ import annotations

# (code, severity, message, path below the walk's current path, profile the rule came from)
Finding = tuple[str, str, str, tuple[str | int, ...], str | None]
Findings = tuple[Finding, ...]


def finding(code: str, message: str, severity: str = "error", extra: tuple[str | int, ...] = (),
            profile: str | None = None) -> Finding:  # fmt: skip
    return (code, severity, message, extra, profile)
