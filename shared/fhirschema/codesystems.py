"""Loaded CodeSystems indexed for offline use: concepts by code, designations, properties, hierarchy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HIERARCHY_PROPS = ("parent", "subsumedBy")


def norm(text: str) -> str:
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
            for prop in HIERARCHY_PROPS:
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
            names = {norm(d["value"]) for d in item.get("designation") or [] if d.get("value")}
            if item.get("display"):
                names.add(norm(item["display"]))
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
