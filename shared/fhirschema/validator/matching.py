"""Deep-partial matching (patterns, slice `match`) and exact matching (fixed values)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Called for operators that need more than the data: ("$profile", data, [urls]) and
# ("$valueset", data, url). Returns whether `data` satisfies it.
ProfileCheck = Callable[[str, Any, Any], bool]


def matches(pattern: Any, data: Any, profile_check: ProfileCheck | None = None) -> bool:
    """Does `data` contain `pattern`? Arrays: every pattern item must match some data item."""
    if isinstance(pattern, dict):
        if isinstance(data, list):
            return any(matches(pattern, item, profile_check) for item in data)
        if not isinstance(data, dict):
            if "$value" in pattern and len(pattern) == 1:
                return data == pattern["$value"]
            return False
        for key, want in pattern.items():
            if key[0] == "$":
                if not _operator(key, want, data, profile_check):
                    return False
                continue
            if isinstance(want, dict) and any(k[0] == "$" for k in want):
                if not _keyed_operator(key, want, data, profile_check):
                    return False
                continue
            if key not in data or not matches(want, data[key], profile_check):
                return False
        return True
    if isinstance(pattern, list):
        if not isinstance(data, list):
            return len(pattern) == 1 and matches(pattern[0], data, profile_check)
        return all(any(matches(p, d, profile_check) for d in data) for p in pattern)
    return pattern == data


def _operator(op: str, want: Any, data: dict[str, Any], profile_check: ProfileCheck | None) -> bool:
    if op == "$type":
        rtype = data.get("resourceType")
        return rtype is None or rtype in want
    if op in ("$profile", "$valueset"):
        return profile_check is None or profile_check(op, data, want)
    if op == "$value":
        return data == want
    return True


def _keyed_operator(
    key: str, want: dict[str, Any], data: dict[str, Any], profile_check: ProfileCheck | None
) -> bool:
    present = key in data
    if "$exists" in want and bool(want["$exists"]) != (
        present or any(k.startswith(key) for k in data if k != key and k[len(key) : len(key) + 1].isupper())
    ):
        return False
    if "$type" in want:
        types = want["$type"]
        if present:
            value = data[key]
            if isinstance(value, dict) and value.get("resourceType", types[0]) not in types:
                return False
        elif not any(key + t[:1].upper() + t[1:] in data for t in types):
            return False
    if (
        "$profile" in want
        and present
        and profile_check is not None
        and not profile_check("$profile", data[key], want["$profile"])
    ):
        return False
    rest = {k: v for k, v in want.items() if k[0] != "$"}
    return not rest or (present and matches(rest, data[key], profile_check))


def equals(fixed: Any, data: Any) -> bool:
    """Exact equality for fixed[x]; numbers compare by value (1 == 1.0)."""
    return fixed == data
