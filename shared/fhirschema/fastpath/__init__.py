"""Native evaluation of the FHIRPath subset most invariants are written in.

Most FHIR invariants are boolean combinations of paths, existence tests, literal comparisons
and counts: `code.empty() or system.exists()`, `repeats=true or initial.count() <= 1`,
`type != 'display' or readOnly.empty()`. Through a general FHIRPath interpreter each costs
~50 µs and dominated validation time; compiled here to closures over plain JSON they cost
about 1-5 µs. Syntax outside the subset compiles to None; a function outside it compiles to a
step that raises `Unsupported` when its value is needed, as do values the subset cannot compare
(partial date-times, complex types). Either way the constraint is left to fhirpathpy: the full
semantics stay with the maintained library.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhirschema.fastpath.operators import Eval, Unsupported
from fhirschema.fastpath.parser import _Parser, _tokens

__all__ = ["Unsupported", "compile_subset", "guard"]

Check = Callable[[Any, dict[str, Any]], bool | None]
_CACHE: dict[str, Check | None] = {}
# Larger expressions go to fhirpathpy. Compiled (scripts/build_engine.py), parsing and evaluating
# recurse in C, where no RecursionError stops them: nesting and chain length must be bounded.
# R4 core, US Core and IPS invariants nest at most 5 levels in at most 121 tokens.
MAX_NESTING = 32
MAX_TOKENS = 1000


def compile_subset(expression: str) -> Check | None:
    """A native check for `expression` (None when outside the subset).

    The check returns True/False, or None when this input needs the full engine.
    """
    if expression in _CACHE:
        return _CACHE[expression]
    check = _special(expression)
    if check is None:
        tokens = _tokens(expression)
        if tokens and len(tokens) <= MAX_TOKENS and _nesting(tokens) <= MAX_NESTING:
            parser = _Parser(tokens)
            try:
                tree = parser.implies()
                if parser.peek() is None:
                    check = _as_check(tree)
            except (ValueError, IndexError, KeyError, RecursionError):
                check = None
    _CACHE[expression] = check
    return check


def _nesting(tokens: list[tuple[str, str]]) -> int:
    depth = deepest = 0
    for _kind, value in tokens:
        if value in ("(", "["):
            depth += 1
            deepest = max(deepest, depth)
        elif value in (")", "]"):
            depth -= 1
    return deepest


def _as_check(tree: Eval) -> Check:
    def check(node: Any, env: dict[str, Any]) -> bool | None:
        try:
            result = tree(node, env)
        except (Unsupported, RecursionError):
            return None
        if not result:
            return True  # FHIR: an empty result does not fail the constraint
        if len(result) == 1:
            return result[0] if isinstance(result[0], bool) else True
        return None

    return check


def _special(expression: str) -> Check | None:
    # ref-1: a local reference must name a contained resource of the root resource.
    if expression.startswith("reference.startsWith('#').not() or (reference.substring(1)"):
        return _ref1
    # dom-3: every contained resource is referenced from elsewhere in the resource (or refers
    # back to it with "#"). The FHIRPath form walks descendants() once per contained item.
    if expression.startswith("contained.where((('#'+id in (%resource.descendants().reference"):
        return _dom3
    return None


def _ref1(node: Any, env: dict[str, Any]) -> bool:
    ref = node.get("reference") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#") or ref == "#":
        return True  # `#` alone is the container itself (R4 §2.3.0.1)
    root = env.get("root") or {}
    contained = root.get("contained")
    if not isinstance(contained, list):
        contained = []
    return ref[1:] in {c.get("id") for c in contained if isinstance(c, dict)}


_NARRATIVE_LINK = re.compile(r"""(?:src|href)\s*=\s*["']#([^"']+)["']""")


def _strings(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if item.startswith("#"):
                found.add(item)
            elif "#" in item and "<" in item:  # a narrative may refer to them: <img src="#id">
                found.update("#" + x for x in _NARRATIVE_LINK.findall(item))
    return found


def _dom3(node: Any, env: dict[str, Any]) -> bool:
    contained = node.get("contained") if isinstance(node, dict) else None
    if not contained or not isinstance(contained, list):
        return True  # nothing contained, or not an array (reported by the walk as fs203)
    referenced = _strings({k: v for k, v in node.items() if k != "contained"}) | _strings(contained)
    for item in contained:
        if (
            isinstance(item, dict)
            and "#" + str(item.get("id")) not in referenced
            and "#" not in _strings(item)
        ):
            return False
    return True


def guard(expression: str) -> Callable[[Any], bool] | None:
    """A cheap test that proves `expression` true without evaluating it (None: no such test)."""
    if expression.startswith("contained.") and expression.rstrip().endswith(".empty()"):
        return lambda node: not (isinstance(node, dict) and node.get("contained"))
    return None
