"""Native evaluation of the FHIRPath subset most invariants are written in.

Most FHIR invariants are boolean combinations of paths, existence tests, literal comparisons
and counts: `code.empty() or system.exists()`, `repeats=true or initial.count() <= 1`,
`type != 'display' or readOnly.empty()`. Through a general FHIRPath interpreter each costs
~50 µs and dominated validation time; compiled here to closures over plain JSON they cost
about 1-5 µs. Anything outside the subset (where(), select(), date comparisons, ...) compiles
to None, or raises `Unsupported` at run time, and is left to fhirpathpy: the full semantics
stay with the maintained library.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

Eval = Callable[[Any, dict[str, Any]], list[Any]]


class Unsupported(Exception):
    """This input needs the full FHIRPath engine."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<op><=|>=|!=|[=<>|()+.,])"
    r"|(?P<var>%[A-Za-z]+)|(?P<name>`[^`]+`|\$this|[A-Za-z_][A-Za-z0-9_]*))"
)


def _tokens(expr: str) -> list[tuple[str, str]] | None:
    out = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            if expr[pos:].strip():
                return None
            break
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _children(items: list[Any], name: str, choices: Any = None) -> list[Any]:
    """Step to `name`. `choices`: the choice groups known at this node, None when unknown."""
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        value = item.get(name)
        if value is None:
            # choice element: `value` means valueQuantity, valueString, ... but `response` is not
            # `responseCode`: only the schema can tell, so without it leave this to fhirpathpy.
            for key, v in item.items():
                if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
                    if choices is None:
                        raise Unsupported(f"is {name} a choice element?")
                    if name in choices:
                        value = v
                    break
        if value is None:
            if "_" + name in item:
                raise Unsupported("primitive with only an extension")
            continue
        if isinstance(value, list):
            out.extend(v for v in value if v is not None)
        else:
            out.append(value)
    return out


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


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i][1] if self.i < len(self.t) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.t):
            raise ValueError("unexpected end")
        tok = self.t[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        if self.take()[1] != value:
            raise ValueError(value)

    # precedence, lowest first: implies; or/xor; and; in/contains; =/!=; </>; |; +; term
    def implies(self) -> Eval:
        left = self.disj()
        while self.peek() == "implies":
            self.take()
            left = _implies(left, self.disj())
        return left

    def disj(self) -> Eval:
        left = self.conj()
        while self.peek() in ("or", "xor"):
            op = self.take()[1]
            left = (_or if op == "or" else _xor)(left, self.conj())
        return left

    def conj(self) -> Eval:
        left = self.member()
        while self.peek() == "and":
            self.take()
            left = _and(left, self.member())
        return left

    def member(self) -> Eval:
        left = self.equality()
        if self.peek() == "in":
            self.take()
            return _in(left, self.equality())
        return left

    def equality(self) -> Eval:
        left = self.order()
        if self.peek() in ("=", "!="):
            op = self.take()[1]
            return _equals(left, self.order(), negate=op == "!=")
        return left

    def order(self) -> Eval:
        left = self.additive()
        if self.peek() in ("<", ">", "<=", ">="):
            op = self.take()[1]
            return _compare(left, self.additive(), op)
        return left

    def additive(self) -> Eval:
        left = self.union()
        while self.peek() == "+":
            self.take()
            left = _plus(left, self.union())
        return left

    def union(self) -> Eval:
        parts = [self.term()]
        while self.peek() == "|":
            self.take()
            parts.append(self.term())
        if len(parts) == 1:
            return parts[0]
        return lambda n, env: [x for p in parts for x in p(n, env)]

    def criteria(self) -> Eval:
        inner = self.implies()
        self.expect(")")
        return inner

    def term(self) -> Eval:
        kind, value = self.take()
        if value == "$this":
            return self.invocations(lambda n, env: [n], literal_base=True)
        if kind == "str":
            literal = value[1:-1].replace("\\'", "'")
            base: Eval = lambda n, env: [literal]  # noqa: E731
            return self.invocations(base, literal_base=True)
        if kind == "num":
            number = float(value) if "." in value else int(value)
            return lambda n, env: [number]
        if value == "(":
            inner = self.implies()
            self.expect(")")
            return self.invocations(inner, literal_base=True)
        if kind == "var":
            if value in _CONSTANTS:
                constant = _CONSTANTS[value]
                return lambda n, env: [constant]
            if value not in ("%resource", "%rootResource"):
                raise ValueError(value)
            key = "resource" if value == "%resource" else "root"
            return self.invocations(lambda n, env: [env[key]], literal_base=True)
        if kind == "name":
            if value in ("true", "false"):
                flag = value == "true"
                return lambda n, env: [flag]
            self.i -= 1
            return self.invocations(lambda n, env: [n], literal_base=False)
        raise ValueError(value)

    def invocations(self, base: Eval, *, literal_base: bool) -> Eval:
        current = base
        first = not literal_base
        while first or self.peek() == ".":
            if not first:
                self.take()
            first = False
            kind, name = self.take()
            if kind != "name":
                raise ValueError(name)
            name = name.strip("`")
            if self.peek() == "(":
                self.take()
                current = self.function(current, name)
            elif self.t[self.i : self.i + 3] == [("op", "."), ("name", "ofType"), ("op", "(")]:
                # `value.ofType(Quantity)` on a choice element is the key `valueQuantity`
                self.i += 3
                kind, type_name = self.take()
                self.expect(")")
                if kind != "name":
                    raise ValueError("ofType")
                key = name + type_name[:1].upper() + type_name[1:]
                current = (lambda c, k: lambda n, env: _children_exact(c(n, env), k))(current, key)
            elif current is base and not literal_base:  # a step from the focus: its schema is known
                current = (lambda nm: lambda n, env: _children([n], nm, env.get("groups")))(name)
            else:
                current = (lambda c, nm: lambda n, env: _children(c(n, env), nm))(current, name)
        return current

    def function(self, base: Eval, name: str) -> Eval:
        if name in ("exists", "empty", "hasValue", "not", "count", "first"):
            if self.peek() != ")" and name == "exists":  # exists(criteria) = where(criteria).exists()
                return _exists(_where(base, self.criteria()))
            self.expect(")")
            return _FUNCS[name](base)
        if name == "trace":  # debugging aid: the input, unchanged
            while self.take()[1] != ")":
                pass
            return base
        if name == "is":
            kind, type_name = self.take()
            self.expect(")")
            if kind != "name" or not type_name[:1].isupper():
                raise ValueError("is")
            return _is_resource(base, type_name)
        if name == "matches":
            kind, arg = self.take()
            self.expect(")")
            if kind != "str":
                raise ValueError(name)
            return _matches(base, re.compile(arg[1:-1].replace("\\\\", "\\"), re.DOTALL))
        if name in ("all", "where"):
            criteria = self.criteria()
            return (_all if name == "all" else _where)(base, criteria)
        if name in ("contains", "startsWith", "endsWith"):
            kind, arg = self.take()
            self.expect(")")
            if kind != "str":
                raise ValueError(name)
            text = arg[1:-1]
            method = {"contains": str.__contains__, "startsWith": str.startswith, "endsWith": str.endswith}[
                name
            ]

            def fn(n: Any, env: dict[str, Any]) -> list[Any]:
                coll = base(n, env)
                if not coll:
                    return []
                value = _single(coll)
                if not isinstance(value, str):
                    raise Unsupported(name)
                return [method(value, text)]

            return fn
        raise ValueError(name)


def _exists(base: Eval) -> Eval:
    return lambda n, env: [bool(base(n, env))]


def _empty(base: Eval) -> Eval:
    return lambda n, env: [not base(n, env)]


def _has_value(base: Eval) -> Eval:
    return lambda n, env: [any(not isinstance(x, dict | list) for x in base(n, env))]


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
                out.extend(v for v in value if v is not None)
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
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        coll = base(n, env)
        if not coll:
            return []
        value = _single(coll)
        if not isinstance(value, dict) or "resourceType" not in value:
            raise Unsupported("is() on a non-resource")
        return [value["resourceType"] == type_name]

    return fn


def _matches(base: Eval, pattern: re.Pattern[str]) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        coll = base(n, env)
        if not coll:
            return []
        value = _single(coll)
        if not isinstance(value, str):
            raise Unsupported("matches() on a non-string")
        return [pattern.search(value) is not None]

    return fn


def _first(base: Eval) -> Eval:
    return lambda n, env: base(n, env)[:1]


def _inner(env: dict[str, Any]) -> dict[str, Any]:
    """The environment for criteria: their focus is an item, whose schema is not known here."""
    return {**env, "groups": None} if env.get("groups") is not None else env


def _where(base: Eval, criteria: Eval) -> Eval:
    return lambda n, env: [x for x in base(n, env) if _truth(criteria(x, _inner(env))) is True]


def _all(base: Eval, criteria: Eval) -> Eval:
    return lambda n, env: [all(_truth(criteria(x, _inner(env))) is True for x in base(n, env))]


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
    if isinstance(value, dict | list):
        raise Unsupported("complex equality")
    return value


def _equals(a: Eval, b: Eval, *, negate: bool) -> Eval:
    def fn(n: Any, env: dict[str, Any]) -> list[Any]:
        left, right = a(n, env), b(n, env)
        if not left or not right:
            return []
        if len(left) != len(right):
            return [negate]
        same = all(
            (_plain(x) == _plain(y) and type(x) is not bool) or x is y
            for x, y in zip(left, right, strict=True)
        )
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
        x, y = _ordered(_single(left)), _ordered(_single(right))
        return [x < y if op == "<" else x > y if op == ">" else x <= y if op == "<=" else x >= y]

    return fn


_FULL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _ordered(value: Any) -> Any:
    """A comparable form: numbers, and full date-times with zones (as instants).

    Partial dates and zone-less times need FHIRPath's precision rules: left to the full engine.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _FULL_DATETIME.match(value):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    raise Unsupported("ordering needs FHIRPath precision rules")


Check = Callable[[Any, dict[str, Any]], bool | None]
_CACHE: dict[str, Check | None] = {}


def compile_subset(expression: str) -> Check | None:
    """A native check for `expression` (None when outside the subset).

    The check returns True/False, or None when this input needs the full engine.
    """
    if expression in _CACHE:
        return _CACHE[expression]
    check = _special(expression)
    if check is None:
        tokens = _tokens(expression)
        if tokens:
            parser = _Parser(tokens)
            try:
                tree = parser.implies()
                if parser.peek() is None:
                    check = _as_check(tree)
            except (ValueError, IndexError, KeyError, RecursionError):
                check = None
    _CACHE[expression] = check
    return check


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
    if not isinstance(ref, str) or not ref.startswith("#"):
        return True
    root = env.get("root") or {}
    return ref[1:] in {c.get("id") for c in root.get("contained") or () if isinstance(c, dict)}


def _strings(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and item.startswith("#"):
            found.add(item)
    return found


def _dom3(node: Any, env: dict[str, Any]) -> bool:
    contained = node.get("contained") if isinstance(node, dict) else None
    if not contained:
        return True
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
