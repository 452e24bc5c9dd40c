"""The checks the native subset runs at every node: a parsed expression's verdict, and the
hand-written forms of ref-1 and dom-3 (see `compile_subset`).

Compiled with the operators (scripts/build_engine.py): the package init is not, and as Python
these ran at every constrained node (~28,000 calls a pass over the bench's corpus), around
closures that are C.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhirschema.fastpath.operators import Eval, Unsupported

Check = Callable[[Any, dict[str, Any]], bool | None]


def as_check(tree: Eval) -> Check:
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


def no_contained(node: Any) -> bool:
    """The guard of `contained.<...>.empty()` constraints: nothing contained proves them."""
    return not (isinstance(node, dict) and node.get("contained"))


def ref1(node: Any, env: dict[str, Any]) -> bool | None:
    """ref-1: a local reference must name a contained resource of the root resource."""
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
            for value in item.values():  # compiled, extend(values()) iterated a view generically
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if item.startswith("#"):
                found.add(item)
            elif "#" in item and "<" in item:  # a narrative may refer to them: <img src="#id">
                found.update("#" + x for x in _NARRATIVE_LINK.findall(item))
    return found


def dom3(node: Any, env: dict[str, Any]) -> bool | None:
    """dom-3: every contained resource is referenced from elsewhere in the resource (or refers
    back to it with "#"). The FHIRPath form walks descendants() once per contained item."""
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


# US Core's us-core-17 (Practitioner.identifier:NPI, Organization.identifier:NPI): the NPI's Luhn
# check digit, written out in FHIRPath as ten substring().toInteger() steps. fhirpathpy took
# ~4 M instructions per identifier; the arithmetic is ten digits.
US_CORE_17 = (
    "(((select(value.substring(0,1).toInteger()).select(iif($this<5, $this*2, (($this*2)-9))))"
    "+(value.substring(1,1).toInteger())"
    "+(select(value.substring(2,1).toInteger()).select(iif($this<5, $this*2, (($this*2)-9))))"
    "+(value.substring(3,1).toInteger())"
    "+(select(value.substring(4,1).toInteger()).select(iif($this<5, $this*2, (($this*2)-9))))"
    "+(value.substring(5,1).toInteger())"
    "+(select(value.substring(6,1).toInteger()).select(iif($this<5, $this*2, (($this*2)-9))))"
    "+(value.substring(7,1).toInteger())"
    "+(select(value.substring(8,1).toInteger()).select(iif($this<5, $this*2, (($this*2)-9))))"
    "+(value.substring(9,1).toInteger()) + 24)mod 10=0)"
)
_DIGITS = "0123456789"


def npi_check_digit(node: Any, env: dict[str, Any]) -> bool | None:
    """us-core-17 where its ten first characters are ASCII digits; anything else (no value, a
    shorter one, other characters, whose empty toInteger() FHIRPath propagates) is left to
    fhirpathpy (None)."""
    value = node.get("value") if isinstance(node, dict) else None
    if not isinstance(value, str) or len(value) < 10:
        return None
    total = 24
    for i in range(10):
        digit = _DIGITS.find(value[i])
        if digit < 0:
            return None
        if i % 2 == 0:
            digit = digit * 2 if digit < 5 else digit * 2 - 9
        total += digit
    return total % 10 == 0
