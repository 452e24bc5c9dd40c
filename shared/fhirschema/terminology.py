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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fhirschema.codesystems import HIERARCHY_PROPS, CodeSystemIndex, norm
from fhirschema.expansions import (
    Codes,
    Expansion,
    Result,
    add_contains,
    intersect,
    lookup,
    subtract,
    union,
    whole,
)

__all__ = ["CodeCheck", "CodeSystemIndex", "Codes", "Expansion", "Resolve", "Terminology"]

Resolve = Callable[[str], dict | None]

_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class CodeCheck:
    status: Literal["member", "not-member", "unknown"]
    display_ok: bool | None = None
    message: str = ""


class _Unexpandable(Exception):
    pass


class Terminology:
    def __init__(self, resolve: Resolve | Any) -> None:
        # Also accept a SchemaSource (FhirContext): the validator may hand either over.
        self._resolve: Resolve = resolve if callable(resolve) else resolve.resource
        self._expansions: OrderedDict[str, Result] = OrderedDict()
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
            hit = lookup(res.codes, res.ci, sys, code)
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
        if norm(display) in concept.names:
            return CodeCheck("member", True)
        return CodeCheck(
            "member", False, f'display "{display}" for {system}#{code}; expected "{concept.display}"'
        )

    def _expand(self, url: str, stack: tuple[str, ...] = ()) -> Result:
        with self._lock:
            cached = self._expansions.get(url)
            if cached is not None:
                self._expansions.move_to_end(url)
                return cached
        if url in stack:  # the import chain is passed down, so concurrent callers never mix
            return Result({}, set(), f"circular value set import {url}")
        res = self._compute(url, (*stack, url))
        with self._lock:
            self._expansions[url] = res
            if len(self._expansions) > _CACHE_SIZE:
                self._expansions.popitem(last=False)
        return res

    def _compute(self, url: str, stack: tuple[str, ...]) -> Result:
        vs = self._get(url, "ValueSet")
        if vs is None:
            return self._implicit(url, stack)
        exp = vs.get("expansion") or {}
        if exp.get("contains") is not None and whole(exp):
            res = Result({}, set())
            add_contains(res, exp["contains"])
            return res
        compose = vs.get("compose")
        if compose is None:
            return Result({}, set(), f"value set {url} has no compose or complete expansion")
        res = Result({}, set())
        for inc in compose.get("include") or []:
            part = self._include(inc, stack)
            union(res, part)
        for exc in compose.get("exclude") or []:
            part = self._include(exc, stack)
            # An exclude limited to a system we hold no codes of cannot remove anything we know.
            irrelevant = exc.get("system") not in res.codes and not exc.get("valueSet")
            if part.reason is not None and not irrelevant:
                res.reason = res.reason or f"exclude: {part.reason}"
                res.doubtful.add(exc.get("system") or "*")
            subtract(res, part)
        return res

    def _implicit(self, url: str, stack: tuple[str, ...]) -> Result:
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
        return Result({}, set(), f"value set {url} is not loaded")

    def _include(self, inc: dict[str, Any], stack: tuple[str, ...]) -> Result:
        system = inc.get("system")
        system_ref = f"{system}|{inc['version']}" if inc.get("version") and system else system
        res: Result | None = None
        if system:
            try:
                res = self._from_system(system, system_ref or system, inc)
            except _Unexpandable as exc:
                res = Result({}, set(), str(exc))
        for vs_url in inc.get("valueSet") or []:
            imported = self._expand(vs_url, stack)
            res = imported if res is None else intersect(res, imported)
        return res if res is not None else Result({}, set())

    def _from_system(self, system: str, ref: str, inc: dict[str, Any]) -> Result:
        cs = self.code_system(ref)
        listed = [c for c in inc.get("concept") or [] if isinstance(c.get("code"), str)]
        if cs is None:
            if listed and not inc.get("filter"):
                # An explicit list needs no code system: enumerate it as given.
                return Result({system: {c["code"]: (c["code"], c.get("display")) for c in listed}}, set())
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
        return Result({system: by_code}, set() if cs.case_sensitive else {system})


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
    if op == "=" and prop in cs.declared_props | set(HIERARCHY_PROPS):
        return {k for k, c in cs.concepts.items() if value in c.props.get(prop, ())}
    if op == "exists" and prop in cs.declared_props:
        want = value == "true"
        return {k for k, c in cs.concepts.items() if (prop in c.props) == want}
    raise _Unexpandable(f"filter {prop} {op} {value} on {cs.url} is not supported offline")
