"""Value set expansions: the finished `Expansion`, the partial `Result` and their set algebra."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Codes = dict[str, dict[str, tuple[str, str | None]]]  # system -> key -> (code, display)


@dataclass(slots=True)
class Expansion:
    """The codes of an expanded value set; `contains` is a dict lookup."""

    url: str
    codes: Codes
    case_insensitive: frozenset[str] = frozenset()

    def lookup(self, system: str, code: str) -> tuple[str, str | None] | None:
        return lookup(self.codes, self.case_insensitive, system, code)

    def contains(self, system: str, code: str) -> bool:
        return self.lookup(system, code) is not None

    def __len__(self) -> int:
        return sum(len(v) for v in self.codes.values())

    def __iter__(self) -> Iterator[tuple[str, str, str | None]]:
        for system, by_code in self.codes.items():
            for code, display in by_code.values():
                yield system, code, display


@dataclass(slots=True)
class Result:
    """Expansion under construction; `reason` set = incomplete.

    `doubtful` lists systems ("*" = all) whose listed codes may have been removed by an exclude
    we could not enumerate: those codes are not certain members.
    """

    codes: Codes
    ci: set[str]
    reason: str | None = None
    doubtful: set[str] = field(default_factory=set)


def lookup(
    codes: Codes, ci: set[str] | frozenset[str], system: str, code: str
) -> tuple[str, str | None] | None:
    by_code = codes.get(system)
    if by_code is None:
        return None
    return by_code.get(code.lower() if system in ci else code)


def whole(exp: dict[str, Any]) -> bool:
    """False for paged/truncated stored expansions (offset > 0 or total beyond what is listed)."""
    if exp.get("offset"):
        return False
    total = exp.get("total")
    if total is None:
        return True
    count, stack = 0, list(exp.get("contains") or [])
    while stack:
        item = stack.pop()
        count += 1 if item.get("code") else 0
        stack.extend(item.get("contains") or [])
    return count >= total


def add_contains(res: Result, items: list[dict[str, Any]]) -> None:
    for item in items:
        if item.get("code") and item.get("system"):
            res.codes.setdefault(item["system"], {})[item["code"]] = (item["code"], item.get("display"))
        add_contains(res, item.get("contains") or [])


def union(into: Result, part: Result) -> None:
    for system, by_code in part.codes.items():
        into.codes.setdefault(system, {}).update(by_code)
    into.ci |= part.ci
    into.reason = into.reason or part.reason
    into.doubtful |= part.doubtful


def subtract(into: Result, part: Result) -> None:
    for system, by_code in part.codes.items():
        mine = into.codes.get(system)
        if mine is not None:
            for key in by_code:
                mine.pop(key, None)


def intersect(a: Result, b: Result) -> Result:
    codes: Codes = {}
    for system, by_code in a.codes.items():
        other = b.codes.get(system)
        if other:
            codes[system] = {k: v for k, v in by_code.items() if k in other}
    return Result(codes, a.ci | b.ci, a.reason or b.reason, a.doubtful | b.doubtful)
