"""The runtime of the native FHIRPath subset: collection-valued closures over plain JSON."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

Eval = Callable[[Any, dict[str, Any]], list[Any]]


class Unsupported(Exception):
    """This input needs the full FHIRPath engine."""


def _children(items: list[Any], name: str, choices: Any, under: str) -> list[Any]:
    """Step to `name`. `choices`: the choice groups known at this node, None when unknown;
    `under`: "_" + name (the parser makes it once, not each time a value is absent)."""
    out: list[Any] = []
    for item in items:
        _child(out, item, name, choices, under)
    return out


def _first_step(item: Any, name: str, choices: Any, under: str) -> list[Any]:
    out: list[Any] = []
    _child(out, item, name, choices, under)
    return out


def _child(out: list[Any], item: Any, name: str, choices: Any, under: str) -> None:
    """`item`'s values of `name`, appended to `out` (a first step: the focus alone, no list)."""
    if not isinstance(item, dict):
        return
    value = item.get(name)
    if value is None and (choices is None or name in choices):
        value = _choice(item, name, choices)
    if value is None:
        if under in item:
            raise Unsupported("primitive with only an extension")
        return
    if isinstance(value, list):
        _extend(out, value)
    else:
        out.append(value)


def _extend(out: list[Any], values: list[Any]) -> None:
    # A loop: compiled, out.extend(<generator>) made a generator object for every array.
    for v in values:
        if v is not None:
            out.append(v)


def _choice(item: dict[str, Any], name: str, choices: Any) -> Any:
    """The value of choice element `name` in `item` (None: absent). `value` means valueQuantity,
    valueString, ... but `response` is not `responseCode`: only the schema can tell, so without it
    (`choices` None) leave this to fhirpathpy. The caller asks only when `name` is in `choices`.

    `item` typed: compiled, `key` is then a str, and startswith a C call, not a method lookup
    (a step to an absent element tries every key of the node)."""
    size = len(name)
    for key, v in item.items():
        if len(key) > size and key.startswith(name) and key[size].isupper():
            if choices is None:
                raise Unsupported(f"is {name} a choice element?")
            return v
    return None


def _single(coll: list[Any]) -> Any:
    if len(coll) != 1:
        raise Unsupported("not a singleton")
    return coll[0]


def _truth(coll: list[Any]) -> bool | None:
    if not coll:
        return None
    value = _single(coll)
    return value if isinstance(value, bool) else True


def _bool(value: bool | None) -> list[Any]:
    return [] if value is None else [value]


def _exists(base: Eval) -> Eval:
    return lambda n, env: [bool(base(n, env))]


def _empty(base: Eval) -> Eval:
    return lambda n, env: [not base(n, env)]


def _has_value(base: Eval) -> Eval:
    return lambda n, env: [any(not isinstance(x, (dict, list)) for x in base(n, env))]


def _not(base: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        truth = _truth(base(n, env))
        return [] if truth is None else [not truth]

    return fn


def _count(base: Eval) -> Eval:
    return lambda n, env: [len(base(n, env))]


_CONSTANTS = {
    "%ucum": "http://unitsofmeasure.org",
    "%sct": "http://snomed.info/sct",
    "%loinc": "http://loinc.org",
}


def _children_exact(items: list[Any], key: str) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            value = item.get(key)
            if value is None and "_" + key in item:
                raise Unsupported("primitive with only an extension")
            if isinstance(value, list):
                _extend(out, value)
            elif value is not None:
                out.append(value)
    return out


def _plus(a: Eval, b: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left, right = a(n, env), b(n, env)
        if not left or not right:
            return []
        x, y = _single(left), _single(right)
        if type(x) is not int or type(y) is not int:
            raise Unsupported("+ on non-integers")
        return [x + y]

    return fn


def _is_resource(base: Eval, type_name: str) -> Eval:
    return _singleton_test(
        base, lambda value: value["resourceType"] == type_name, "is",
        accepts=lambda value: isinstance(value, dict) and "resourceType" in value,
    )  # fmt: skip


def _singleton_test(
    base: Eval, test: Callable[[Any], bool], name: str, accepts: Callable[[Any], bool]
) -> Eval:
    """A function of a singleton; values it does not `accept` are left to the full engine."""

    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        coll = base(n, env)
        if not coll:
            return []
        value = _single(coll)
        if not accepts(value):
            raise Unsupported(f"{name}() on {type(value).__name__}")
        return [test(value)]

    return fn


def _string_test(base: Eval, test: Callable[[str], bool], name: str) -> Eval:
    """A string function of a singleton (`matches`, `contains`, `startsWith`, `endsWith`)."""
    return _singleton_test(base, test, name, accepts=lambda value: isinstance(value, str))


def _matches(base: Eval, pattern: re.Pattern[str]) -> Eval:
    return _string_test(base, lambda value: pattern.search(value) is not None, "matches")


def _first(base: Eval) -> Eval:
    return lambda n, env: base(n, env)[:1]


def _inner(env: dict[str, Any]) -> dict[str, Any]:
    """The environment for criteria: their focus is an item, whose schema is not known here."""
    return {**env, "groups": None} if env.get("groups") is not None else env


# The criteria's environment made once per call, not once per item (_inner copies the dict).
def _where(base: Eval, criteria: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        inner = _inner(env)
        return [x for x in base(n, env) if _truth(criteria(x, inner)) is True]

    return fn


def _all(base: Eval, criteria: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        inner = _inner(env)
        for x in base(n, env):
            if _truth(criteria(x, inner)) is not True:
                return [False]
        return [True]

    return fn


def _descendants(base: Eval) -> Eval:
    """descendants(): every value below the input, objects and primitives (arrays flattened)."""

    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        stack = list(base(n, env))
        while stack:
            node = stack.pop()
            if not isinstance(node, dict):
                continue
            for key, value in node.items():
                if key[:1] == "_":
                    raise Unsupported("descendants() over primitive extensions")
                values = value if isinstance(value, list) else [value]
                for v in values:
                    if v is not None:
                        out.append(v)
                        stack.append(v)
        return out

    return fn


def _select(base: Eval, projection: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        inner = _inner(env)
        return [y for x in base(n, env) for y in projection(x, inner)]

    return fn


def _is_distinct(base: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        items = base(n, env)
        if not all(type(x) in (str, int, bool) for x in items):
            raise Unsupported("isDistinct() over values without plain equality")
        return [len({(type(x), x) for x in items}) == len(items)]

    return fn


def _intersect(base: Eval, other: Eval) -> Eval:
    """`a.intersect(b)`: the items of `a` equal to some item of `b`, each once. fhirpathpy
    compares the JSON values with Python's ==, as here."""

    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left = base(n, env)
        if not left:
            return []
        right = other(n, env)
        out: list[Any] = []
        for x in left:
            if x in right and x not in out:  # `in` is == (after identity)
                out.append(x)
        return out

    return fn


def _concat(a: Eval, b: Eval) -> Eval:
    """`a & b`: string concatenation where an empty side counts as ''."""

    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left, right = a(n, env), b(n, env)
        x, y = (_single(left) if left else ""), (_single(right) if right else "")
        if type(x) is not str or type(y) is not str:
            raise Unsupported("& on non-strings")
        return [x + y]

    return fn


def _unsupported(name: str) -> Eval:
    """A function outside the subset: only an input that needs its value goes to fhirpathpy
    (`value.empty() or <unsupported>` is decided here whenever `value` is empty)."""

    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        raise Unsupported(f"{name}() is outside the native subset")

    return fn


_FUNCS = {
    "exists": _exists, "empty": _empty, "hasValue": _has_value, "not": _not, "count": _count, "first": _first,
}  # fmt: skip


def _implies(a: Eval, b: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left = _truth(a(n, env))
        if left is False:
            return [True]
        right = _truth(b(n, env))
        if left is True:
            return _bool(right)
        return [True] if right is True else []

    return fn


def _junction(a: Eval, b: Eval, decisive: bool) -> Eval:
    """`or` (decisive True) and `and` (decisive False), with FHIRPath's three-valued logic."""

    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left = _truth(a(n, env))
        if left is decisive:
            return [decisive]
        right = _truth(b(n, env))
        if right is decisive:
            return [decisive]
        return [not decisive] if left is not None and right is not None else []

    return fn


def _or(a: Eval, b: Eval) -> Eval:
    return _junction(a, b, True)


def _and(a: Eval, b: Eval) -> Eval:
    return _junction(a, b, False)


def _xor(a: Eval, b: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left, right = _truth(a(n, env)), _truth(b(n, env))
        return [] if left is None or right is None else [left != right]

    return fn


def _plain(value: Any) -> Any:
    # A tuple, not `dict | list`: compiled, the union would be built on every call.
    if isinstance(value, (dict, list)):
        raise Unsupported("complex equality")
    return value


def _equals(a: Eval, b: Eval, *, negate: bool) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left, right = a(n, env), b(n, env)
        if not left or not right:
            return []
        if len(left) != len(right):
            return [negate]
        same = True
        for i in range(len(left)):  # not all(zip(..., strict=True)): compiled, an indexed loop
            x, y = left[i], right[i]
            if not ((_plain(x) == _plain(y) and type(x) is not bool) or x is y):
                same = False
                break
        return [same != negate]

    return fn


def _in(a: Eval, b: Eval) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left = a(n, env)
        if not left:
            return []
        value = _plain(_single(left))
        return [any(_plain(x) == value for x in b(n, env))]

    return fn


def _compare(a: Eval, b: Eval, op: str) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left, right = a(n, env), b(n, env)
        if not left or not right:
            return []
        x, y = _ordered_pair(_single(left), _single(right))
        return [x < y if op == "<" else x > y if op == ">" else x <= y if op == "<=" else x >= y]

    return fn


_DATE_ONLY = re.compile(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?")  # fullmatch: ASCII digits, no trailing newline
_FULL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _ordered_pair(x: Any, y: Any) -> tuple[Any, Any]:
    """Dates of the same precision compare as text (FHIRPath gives no answer across precisions)."""
    if (
        type(x) is str
        and type(y) is str
        and len(x) == len(y)
        and _DATE_ONLY.fullmatch(x)
        and _DATE_ONLY.fullmatch(y)
    ):
        return x, y
    return _ordered(x), _ordered(y)


def _ordered(value: Any) -> Any:
    """A comparable form: numbers, and full date-times with zones (as instants).

    Partial dates and zone-less times need FHIRPath's precision rules: left to the full engine.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _FULL_DATETIME.match(value):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:  # a leap second (:60), valid FHIR that datetime cannot hold
            raise Unsupported("a date-time datetime cannot represent") from None
    raise Unsupported("ordering needs FHIRPath precision rules")
