"""Profile limits on a value: minValue[x]/maxValue[x], maxLength and the minLength extension,
and the value-presence rules (mustHaveValue, valueAlternatives) of R5's ElementDefinition that
R4 profiles carry as extensions."""

from __future__ import annotations

from typing import Any

from fhirschema.validator.findings import Finding, finding


class Limits:
    __slots__ = (
        "max_length", "maxima", "min_length", "minima", "must_have_value", "narrative_language", "narrative_source",
        "value_alternatives",
    )  # fmt: skip

    def __init__(self) -> None:
        self.min_length = 0
        self.max_length: int | None = None
        self.minima: list[tuple[Any, str | None]] = []  # (limit, profile), all must hold
        self.maxima: list[tuple[Any, str | None]] = []
        self.must_have_value: str | None = None  # the profile that asks (None: not asked)
        self.value_alternatives: list[str] = []  # extension urls that may stand for a value
        self.narrative_source: str | None = None  # narrative-source-control: its code
        self.narrative_language: str | None = None  # narrative-language-control: _yes, _no, _resource

    def add(self, el: dict[str, Any], origin: str | None) -> bool:
        """Take `el`'s limits; False when it has none."""
        found = False
        for key, value in el.items():
            if key.startswith("minValue") and len(key) > 8:
                self.minima.append((value, origin))
                found = True
            elif key.startswith("maxValue") and len(key) > 8:
                self.maxima.append((value, origin))
                found = True
        if isinstance(el.get("maxLength"), int):
            self.max_length = (
                el["maxLength"] if self.max_length is None else min(self.max_length, el["maxLength"])
            )
            found = True
        if isinstance(el.get("minLength"), int):
            self.min_length = max(self.min_length, el["minLength"])
            found = True
        if el.get("mustHaveValue") is True:
            self.must_have_value = origin or ""
            found = True
        for key in ("narrativeSource", "narrativeLanguage"):
            if isinstance(el.get(key), str):
                if key == "narrativeSource":
                    self.narrative_source = el[key]
                else:
                    self.narrative_language = el[key]
                found = True
        alternatives = el.get("valueAlternatives")
        if isinstance(alternatives, list):
            self.value_alternatives += [a for a in alternatives if isinstance(a, str)]
            found = True
        return found

    def presence_rules(self) -> bool:
        return self.must_have_value is not None or bool(self.value_alternatives)


def limit_findings(item: Any, limits: Limits) -> list[Finding]:
    """Findings on one value against its limits."""
    out: list[Finding] = []
    if isinstance(item, str):
        n = len(item)
        if limits.max_length is not None and n > limits.max_length:
            out.append(
                finding("fs209", f"value is {n} characters long, longer than maxLength {limits.max_length}")
            )
        if n < limits.min_length:
            out.append(
                finding("fs209", f"value is {n} characters long, shorter than minLength {limits.min_length}")
            )
    for limit, origin in limits.minima:
        if _compare(item, limit) == -1:
            out.append(
                finding("fs208", f"value {_shown(item)} is below the minimum {_shown(limit)}", profile=origin)
            )
    for limit, origin in limits.maxima:
        if _compare(item, limit) == 1:
            out.append(
                finding("fs208", f"value {_shown(item)} is above the maximum {_shown(limit)}", profile=origin)
            )
    return out


def absent_value_findings(key: str, companion: Any, limits: Limits) -> list[Finding]:
    """`key` has no value, only its `_key` companion (id, extensions): may it go without one?"""
    out: list[Finding] = []
    if limits.must_have_value is not None:
        out.append(finding("fs210", f"{key} must have a value: the profile does not let an extension stand for it",
                           profile=limits.must_have_value or None))  # fmt: skip
    elif limits.value_alternatives:
        extensions = companion.get("extension") if isinstance(companion, dict) else None
        urls = (
            {e["url"] for e in extensions if isinstance(e, dict) and isinstance(e.get("url"), str)}
            if isinstance(extensions, list)
            else set()
        )
        if not urls & set(limits.value_alternatives):
            out.append(finding("fs210", f"{key} has no value, and none of the extensions that may stand for "
                               f"it ({', '.join(limits.value_alternatives)})"))  # fmt: skip
    return out


def _compare(item: Any, limit: Any) -> int:
    """-1, 0, 1; 0 also when the two cannot be compared (the types' own rules report that)."""
    if isinstance(limit, dict):  # Quantity: compare values when the units agree
        if not isinstance(item, dict):
            return 0
        unit = limit.get("code") or limit.get("unit")
        if unit is not None and (item.get("code") or item.get("unit")) not in (None, unit):
            return 0
        return _compare(item.get("value"), limit.get("value"))
    if isinstance(limit, bool) or isinstance(item, bool):
        return 0
    if isinstance(limit, (int, float)) and isinstance(item, (int, float)):
        return (item > limit) - (item < limit)
    if isinstance(limit, str) and isinstance(item, str):
        # Dates, date-times and times in ISO form order as text at a common precision.
        n = min(len(item), len(limit), 19)
        a, b = item[:n], limit[:n]
        return (a > b) - (a < b)
    return 0


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value.get('value')} {value.get('code') or value.get('unit') or ''}".strip()
    return str(value)
