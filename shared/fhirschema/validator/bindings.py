"""Binding rules: the codes a bound value carries, judged against its value set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhirschema.validator.findings import Finding, Findings, finding
from fhirschema.validator.plans import BINDING_SEVERITY, ElementPlan

Triple = tuple[str | None, str, str | None]  # (system, code, display)
CheckCode = Callable[[str, str | None, str, str | None], Any]  # (vs, system, code, display) -> CodeCheck
MEMO_SIZE = 10_000  # verdicts remembered per element: bounded, a validator lives as long as its process


def binding_findings(item: Any, ep: ElementPlan, check_code: CheckCode) -> Findings:
    """Findings on `item` against `ep`'s binding (only asked when `ep.bound`); the verdict
    depends on the value's codes alone, so it is remembered per element."""
    if type(item) is str and (verdict := ep.verdicts.get(item)) is not None:
        found: Findings = verdict  # a bound code seen before on this element: the commonest case
        return found
    binding, origin = ep.binding  # type: ignore[misc]
    checks = code_triples(item, ep.type)
    if not checks:
        return tuple(no_code(item, ep.type, binding, origin))
    # (system, code, display) triples are strings or None (_triple): always hashable.
    key: Any = item if type(item) is str else tuple(checks)
    verdict = ep.verdicts.get(key)
    if verdict is None:
        verdict = tuple(judge_codes(checks, binding, origin, check_code, ep.type == "code"))
        if len(ep.verdicts) < MEMO_SIZE:
            ep.verdicts[key] = verdict
    found = verdict
    return found


def code_triples(item: Any, t: str | None) -> list[Triple]:
    """The (system, code, display) triples a bound value of type `t` carries."""
    if t in ("code", "string", "uri"):
        return [(None, item, None)] if isinstance(item, str) else []
    if not isinstance(item, dict):
        return []
    obj: dict[str, Any] = item  # typed: compiled, .get is a direct dict lookup
    if t == "Coding" or t == "Quantity":
        code = obj.get("code")
        found = _triple(obj.get("system"), code, obj.get("display") if t == "Coding" else None)
        return [found] if found is not None and code else []
    triples = []  # CodeableConcept
    codings = obj.get("coding")
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict):
            found = _triple(coding.get("system"), coding.get("code"), coding.get("display"))
            if found is not None:
                triples.append(found)
    return triples


def _triple(system: Any, code: Any, display: Any) -> Triple | None:
    """A (system, code, display) the terminology can judge: strings (a system may be absent);
    a display of another type is not compared. Wrong JSON types are the primitives' issues."""
    if not isinstance(code, str) or (system is not None and not isinstance(system, str)):
        return None
    return (system, code, display if isinstance(display, str) else None)


def no_code(item: Any, t: str | None, binding: dict[str, Any], origin: str | None) -> list[Finding]:
    """A bound value that carries no code at all."""
    if t == "CodeableConcept" and binding["strength"] == "required" and isinstance(item, dict):
        vs = binding["valueSet"]
        return [finding("fs501", f"no code given; a code from the required value set {vs} is needed",
                        profile=origin)]  # fmt: skip
    return []


def judge_codes(checks: list[Triple], binding: dict[str, Any], origin: str | None,
                check_code: CheckCode, bare: bool = False) -> list[Finding]:  # fmt: skip
    """Findings on the codes of one value; `check_code(vs, system, code, display)` is the terminology."""
    strength = binding["strength"]
    code, severity = BINDING_SEVERITY[strength]
    vs = binding["valueSet"]
    results = [check_code(vs, system, value, display) for system, value, display in checks]
    out: list[Finding] = []
    if any(r.status == "member" for r in results):
        for r in results:
            if r.display_ok is False:
                out.append(finding("fs504", f"display does not match the code system: {r.message}",
                                   severity="warning"))  # fmt: skip
        return out
    if any(r.status == "unknown" for r in results):
        if strength in ("required", "extensible"):
            reason = next(r.message for r in results if r.status == "unknown")
            out.append(finding("fs505", f"value set {vs} cannot be checked offline: {reason}",
                               severity="information"))  # fmt: skip
        return out
    shown = ", ".join(f"{s}#{c}" if s else str(c) for s, c, _ in checks)
    if strength == "required" and bare:
        # A `code` names no system: none of the value set's code systems defines it either
        # (the reference reports both).
        out.append(finding("fs506", f"no code system of the value set {vs} defines the code {shown}",
                           profile=origin))  # fmt: skip
    out.append(finding(code, f"{shown} is not in the {strength} value set {vs}", severity=severity,
                       profile=origin))  # fmt: skip
    return out
