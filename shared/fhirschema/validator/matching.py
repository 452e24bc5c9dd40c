"""Deep-partial matching (patterns, slice `match`) and exact matching (fixed values)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

# Called for operators that need more than the data: ("$profile", data, [urls]),
# ("$valueset", data, url) and ("$resolve", reference, {"type"|"profile": [...]}). Returns whether
# `data` satisfies it.
ProfileCheck = Callable[[str, Any, Any], bool]
# Compiled (scripts/build_engine.py), recursion is C recursion, which no RecursionError stops:
# deeper data raises one here, which Validator.validate reports as fs1302 like the source does.
MAX_DEPTH: Final = 100


def matches(pattern: Any, data: Any, profile_check: ProfileCheck | None = None, depth: int = 0) -> bool:
    """Does `data` contain `pattern`? Arrays: every pattern item must match some data item."""
    if depth > MAX_DEPTH:
        raise RecursionError("data nested too deeply to match a pattern")
    depth += 1
    if isinstance(pattern, dict):
        if isinstance(data, list):
            return any(matches(pattern, item, profile_check, depth) for item in data)
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
                if not _keyed_operator(key, want, data, profile_check, depth):
                    return False
                continue
            if key not in data or not matches(want, data[key], profile_check, depth):
                return False
        return True
    if isinstance(pattern, list):
        if not isinstance(data, list):
            return len(pattern) == 1 and matches(pattern[0], data, profile_check, depth)
        return all(any(matches(p, d, profile_check, depth) for d in data) for p in pattern)
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
    key: str, want: dict[str, Any], data: dict[str, Any], profile_check: ProfileCheck | None, depth: int
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
    if "$resolve" in want and (
        not present or profile_check is None or not profile_check("$resolve", data[key], want["$resolve"])
    ):
        return False
    rest = {k: v for k, v in want.items() if k[0] != "$"}
    return not rest or (present and matches(rest, data[key], profile_check, depth))


def equals(fixed: Any, data: Any) -> bool:
    """Exact equality for fixed[x]; numbers compare by value (1 == 1.0)."""
    return fixed == data
