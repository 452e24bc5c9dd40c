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

from collections.abc import Callable
from typing import Any

from fhirschema.fastpath.checks import US_CORE_17, Check, as_check, dom3, no_contained, npi_check_digit, ref1
from fhirschema.fastpath.operators import Unsupported
from fhirschema.fastpath.parser import _Parser, _tokens

__all__ = ["Unsupported", "compile_subset", "guard"]

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
                    check = as_check(tree)
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


def _special(expression: str) -> Check | None:
    # ref-1, dom-3 and us-core-17 (see checks.py): the FHIRPath form of dom-3 walks descendants()
    # once per contained item, us-core-17's takes fhirpathpy ~4 M instructions.
    if expression.startswith("reference.startsWith('#').not() or (reference.substring(1)"):
        return ref1
    if expression.startswith("contained.where((('#'+id in (%resource.descendants().reference"):
        return dom3
    if expression == US_CORE_17:
        return npi_check_digit
    return None


def guard(expression: str) -> Callable[[Any], bool] | None:
    """A cheap test that proves `expression` true without evaluating it (None: no such test)."""
    if expression.startswith("contained.") and expression.rstrip().endswith(".empty()"):
        return no_contained
    return None
