"""Offline terminology: expand ValueSets from loaded CodeSystems and check code membership.

Soundness rule: a value set that cannot be fully expanded offline (a code system that is not
loaded or not `content=complete`, an unsupported filter, a missing import) never yields
"not-member". Partial expansions are still used to confirm membership when no exclude is in
doubt. Expansions are computed lazily and cached per value-set canonical (bounded).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Resolve = Callable[[str], dict | None]

_CACHE_SIZE = 512
_HIERARCHY_PROPS = ("parent", "subsumedBy")


@dataclass(frozen=True, slots=True)
class CodeCheck:
    status: Literal["member", "not-member", "unknown"]
    display_ok: bool | None = None
    message: str = ""


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(slots=True)
class _Concept:
    code: str
    display: str | None
    names: set[str]  # normalised display + designation values
    props: dict[str, list[str]]
    children: list[str] = field(default_factory=list)


class CodeSystemIndex:
    """One CodeSystem flattened: concepts by (case-folded when case-insensitive) code."""

    def __init__(self, cs: dict[str, Any]) -> None:
        self.url: str = cs.get("url", "")
        self.content: str = cs.get("content", "complete")
        self.case_sensitive: bool = cs.get("caseSensitive") is not False
        self.declared_props = {p.get("code") for p in cs.get("property") or []}
        self.concepts: dict[str, _Concept] = {}
        self._flatten(cs.get("concept") or [], None)
        # Hierarchy may also be stated with `parent`/`subsumedBy` properties instead of nesting.
        for key, c in list(self.concepts.items()):
            for prop in _HIERARCHY_PROPS:
                for parent in c.props.get(prop, ()):
                    p = self.concepts.get(self.key(parent))
                    if p is not None and key not in p.children:
                        p.children.append(key)

    def key(self, code: str) -> str:
        return code if self.case_sensitive else code.lower()

    def _flatten(self, concepts: list[dict[str, Any]], parent: str | None) -> None:
        for item in concepts:
            code = item.get("code")
            if not isinstance(code, str):
                continue
            key = self.key(code)
            names = {_norm(d["value"]) for d in item.get("designation") or [] if d.get("value")}
            if item.get("display"):
                names.add(_norm(item["display"]))
            props: dict[str, list[str]] = {}
            for p in item.get("property") or []:
                props.setdefault(p.get("code", ""), []).append(_prop_value(p))
            self.concepts.setdefault(key, _Concept(code, item.get("display"), names, props))
            if parent is not None:
                self.concepts[parent].children.append(key)
            self._flatten(item.get("concept") or [], key)

    def descendants(self, code: str) -> set[str]:
        """Keys strictly below `code` (DAG-safe: v3 concepts may have several parents)."""
        seen: set[str] = set()
        start = self.concepts.get(self.key(code))
        stack = list(start.children) if start else []
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(self.concepts[k].children)
        return seen


def _prop_value(p: dict[str, Any]) -> str:
    for name, val in p.items():
        if name.startswith("value"):
            if isinstance(val, bool):
                return "true" if val else "false"
            if isinstance(val, dict):  # valueCoding
                return str(val.get("code", ""))
            return str(val)
    return ""


Codes = dict[str, dict[str, tuple[str, str | None]]]  # system -> key -> (code, display)


@dataclass(slots=True)
class Expansion:
    """The codes of an expanded value set; `contains` is a dict lookup."""

    url: str
    codes: Codes
    case_insensitive: frozenset[str] = frozenset()

    def lookup(self, system: str, code: str) -> tuple[str, str | None] | None:
        return _lookup(self.codes, self.case_insensitive, system, code)

    def contains(self, system: str, code: str) -> bool:
        return self.lookup(system, code) is not None

    def __len__(self) -> int:
        return sum(len(v) for v in self.codes.values())

    def __iter__(self) -> Iterator[tuple[str, str, str | None]]:
        for system, by_code in self.codes.items():
            for code, display in by_code.values():
                yield system, code, display


@dataclass(slots=True)
class _Result:
    """Expansion under construction; `reason` set = incomplete.

    `doubtful` lists systems ("*" = all) whose listed codes may have been removed by an exclude
    we could not enumerate: those codes are not certain members.
    """

    codes: Codes
    ci: set[str]
    reason: str | None = None
    doubtful: set[str] = field(default_factory=set)


def _lookup(
    codes: Codes, ci: set[str] | frozenset[str], system: str, code: str
) -> tuple[str, str | None] | None:
    by_code = codes.get(system)
    if by_code is None:
        return None
    return by_code.get(code.lower() if system in ci else code)


class _Unexpandable(Exception):
    pass


class Terminology:
    def __init__(self, resolve: Resolve | Any) -> None:
        # Also accept a SchemaSource (FhirContext): the validator may hand either over.
        self._resolve: Resolve = resolve if callable(resolve) else resolve.resource
        self._expansions: OrderedDict[str, _Result] = OrderedDict()
        self._systems: OrderedDict[str, CodeSystemIndex | None] = OrderedDict()
        self._lock = threading.Lock()  # guards the LRU dicts; expansion itself runs unlocked

    # -- public API --------------------------------------------------------------------------

    def expansion(self, value_set: str) -> Expansion | None:
        res = self._expand(value_set)
        if res.reason is not None:
            return None
        return Expansion(value_set, res.codes, frozenset(res.ci))

    def check(self, value_set: str, system: str | None, code: str, display: str | None = None) -> CodeCheck:
        res = self._expand(value_set)
        systems = (system,) if system is not None else res.codes.keys()
        for sys in systems:
            hit = _lookup(res.codes, res.ci, sys, code)
            if hit is not None and not res.doubtful & {sys, "*"}:
                return self._with_display(sys, hit[0], display)
        if res.reason is not None:
            return CodeCheck("unknown", None, f"{value_set} cannot be expanded offline: {res.reason}")
        where = f"{system}#{code}" if system is not None else code
        return CodeCheck("not-member", None, f"{where} is not in value set {value_set}")

    def code_system(self, url: str) -> CodeSystemIndex | None:
        """The loaded CodeSystem `url` (optionally `url|version`), indexed; None if not loaded."""
        with self._lock:
            if url in self._systems:
                self._systems.move_to_end(url)
                return self._systems[url]
        cs = self._get(url, "CodeSystem")
        index = CodeSystemIndex(cs) if cs is not None else None
        with self._lock:
            self._systems[url] = index
            if len(self._systems) > _CACHE_SIZE:
                self._systems.popitem(last=False)
        return index

    # -- internals ---------------------------------------------------------------------------

    def _get(self, url: str, rtype: str) -> dict[str, Any] | None:
        res = self._resolve(url)
        if res is None and "|" in url:
            res = self._resolve(url.split("|", 1)[0])
        return res if res is not None and res.get("resourceType") == rtype else None

    def _with_display(self, system: str, code: str, display: str | None) -> CodeCheck:
        if display is None:
            return CodeCheck("member")
        cs = self.code_system(system)
        concept = cs.concepts.get(cs.key(code)) if cs is not None else None
        if cs is None:
            return CodeCheck("member", None, f"display not checked: {system} is not loaded")
        if concept is None:
            return CodeCheck("member", None, f"display not checked: {code} is not defined in {system}")
        if _norm(display) in concept.names:
            return CodeCheck("member", True)
        return CodeCheck(
            "member", False, f'display "{display}" for {system}#{code}; expected "{concept.display}"'
        )

    def _expand(self, url: str, stack: tuple[str, ...] = ()) -> _Result:
        with self._lock:
            cached = self._expansions.get(url)
            if cached is not None:
                self._expansions.move_to_end(url)
                return cached
        if url in stack:  # the import chain is passed down, so concurrent callers never mix
            return _Result({}, set(), f"circular value set import {url}")
        res = self._compute(url, (*stack, url))
        with self._lock:
            self._expansions[url] = res
            if len(self._expansions) > _CACHE_SIZE:
                self._expansions.popitem(last=False)
        return res

    def _compute(self, url: str, stack: tuple[str, ...]) -> _Result:
        vs = self._get(url, "ValueSet")
        if vs is None:
            return self._implicit(url, stack)
        exp = vs.get("expansion") or {}
        if exp.get("contains") is not None and _whole(exp):
            res = _Result({}, set())
            _add_contains(res, exp["contains"])
            return res
        compose = vs.get("compose")
        if compose is None:
            return _Result({}, set(), f"value set {url} has no compose or complete expansion")
        res = _Result({}, set())
        for inc in compose.get("include") or []:
            part = self._include(inc, stack)
            _union(res, part)
        for exc in compose.get("exclude") or []:
            part = self._include(exc, stack)
            # An exclude limited to a system we hold no codes of cannot remove anything we know.
            irrelevant = exc.get("system") not in res.codes and not exc.get("valueSet")
            if part.reason is not None and not irrelevant:
                res.reason = res.reason or f"exclude: {part.reason}"
                res.doubtful.add(exc.get("system") or "*")
            _subtract(res, part)
        return res

    def _implicit(self, url: str, stack: tuple[str, ...]) -> _Result:
        """A value set url that is a CodeSystem's `valueSet` (all codes) — located by convention."""
        base = url.split("|", 1)[0]
        raw = self._resolve(url)
        if raw is not None and raw.get("resourceType") == "CodeSystem" and raw.get("url"):
            return self._include({"system": raw["url"]}, stack)
        candidates = [base.replace("/ValueSet/", "/CodeSystem/"), base.replace("/ValueSet/", "/")]
        for cand in dict.fromkeys(c for c in candidates if c != base):
            cs = self._get(cand, "CodeSystem")
            if cs is not None and (cs.get("valueSet") or "").split("|", 1)[0] == base:
                return self._include({"system": cand}, stack)
        return _Result({}, set(), f"value set {url} is not loaded")

    def _include(self, inc: dict[str, Any], stack: tuple[str, ...]) -> _Result:
        system = inc.get("system")
        system_ref = f"{system}|{inc['version']}" if inc.get("version") and system else system
        res: _Result | None = None
        if system:
            try:
                res = self._from_system(system, system_ref or system, inc)
            except _Unexpandable as exc:
                res = _Result({}, set(), str(exc))
        for vs_url in inc.get("valueSet") or []:
            imported = self._expand(vs_url, stack)
            res = imported if res is None else _intersect(res, imported)
        return res if res is not None else _Result({}, set())

    def _from_system(self, system: str, ref: str, inc: dict[str, Any]) -> _Result:
        cs = self.code_system(ref)
        listed = [c for c in inc.get("concept") or [] if isinstance(c.get("code"), str)]
        if cs is None:
            if listed and not inc.get("filter"):
                # An explicit list needs no code system: enumerate it as given.
                return _Result({system: {c["code"]: (c["code"], c.get("display")) for c in listed}}, set())
            raise _Unexpandable(f"code system {system} is not loaded")
        if "concept" not in inc and cs.content != "complete":
            raise _Unexpandable(f"code system {system} is content={cs.content}")
        # Codes listed but unknown to the code system are trusted as the value set gives them.
        given = {cs.key(c["code"]): (c["code"], c.get("display")) for c in listed}
        keys = set(given) if "concept" in inc else set(cs.concepts)
        for flt in inc.get("filter") or []:
            keys &= _filter(cs, flt)
        by_code: dict[str, tuple[str, str | None]] = {}
        for k in keys:
            concept = cs.concepts.get(k)
            by_code[k] = (concept.code, concept.display) if concept is not None else given[k]
        return _Result({system: by_code}, set() if cs.case_sensitive else {system})


def _filter(cs: CodeSystemIndex, flt: dict[str, Any]) -> set[str]:
    op, prop, value = flt.get("op"), flt.get("property"), str(flt.get("value", ""))
    if prop == "concept" or (prop == "code" and op in ("=", "in", "regex")):
        if op == "is-a":
            key = cs.key(value)
            return cs.descendants(value) | ({key} if key in cs.concepts else set())
        if op == "descendent-of":
            return cs.descendants(value)
        if op == "is-not-a":
            return set(cs.concepts) - cs.descendants(value) - {cs.key(value)}
        if op == "=":
            return {cs.key(value)} & cs.concepts.keys()
        if op == "in":
            return {cs.key(v.strip()) for v in value.split(",")} & cs.concepts.keys()
        if op == "regex":
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise _Unexpandable(f"regex {value!r} on {cs.url} is not usable: {exc}") from None
            return {k for k, c in cs.concepts.items() if pattern.fullmatch(c.code)}
    if op == "=" and prop in cs.declared_props | set(_HIERARCHY_PROPS):
        return {k for k, c in cs.concepts.items() if value in c.props.get(prop, ())}
    if op == "exists" and prop in cs.declared_props:
        want = value == "true"
        return {k for k, c in cs.concepts.items() if (prop in c.props) == want}
    raise _Unexpandable(f"filter {prop} {op} {value} on {cs.url} is not supported offline")


def _whole(exp: dict[str, Any]) -> bool:
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


def _add_contains(res: _Result, items: list[dict[str, Any]]) -> None:
    for item in items:
        if item.get("code") and item.get("system"):
            res.codes.setdefault(item["system"], {})[item["code"]] = (item["code"], item.get("display"))
        _add_contains(res, item.get("contains") or [])


def _union(into: _Result, part: _Result) -> None:
    for system, by_code in part.codes.items():
        into.codes.setdefault(system, {}).update(by_code)
    into.ci |= part.ci
    into.reason = into.reason or part.reason
    into.doubtful |= part.doubtful


def _subtract(into: _Result, part: _Result) -> None:
    for system, by_code in part.codes.items():
        mine = into.codes.get(system)
        if mine is not None:
            for key in by_code:
                mine.pop(key, None)


def _intersect(a: _Result, b: _Result) -> _Result:
    codes: Codes = {}
    for system, by_code in a.codes.items():
        other = b.codes.get(system)
        if other:
            codes[system] = {k: v for k, v in by_code.items() if k in other}
    return _Result(codes, a.ci | b.ci, a.reason or b.reason, a.doubtful | b.doubtful)
