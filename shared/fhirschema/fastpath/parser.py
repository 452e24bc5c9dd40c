"""Tokenizer and recursive-descent parser for the native FHIRPath subset (closures out)."""

from __future__ import annotations

import re

from fhirschema.fastpath.operators import (
    _CONSTANTS,
    _FUNCS,
    Eval,
    _all,
    _and,
    _children,
    _children_exact,
    _compare,
    _concat,
    _descendants,
    _equals,
    _exists,
    _first_step,
    _implies,
    _in,
    _intersect,
    _is_distinct,
    _is_resource,
    _matches,
    _or,
    _plus,
    _select,
    _string_test,
    _unsupported,
    _where,
    _xor,
)  # fmt: skip

# `x.ofType(T)` on a choice: the key `xT`, and those of T's specialisations in R4 (FHIRPath: an
# Age is a Quantity, a code a string; fhirpath_types.py decides the same for the full engine). A
# capitalised primitive name names a type only as the System type of its name (`DateTime`: the
# dateTime key); `Code` or `Instant` name none, and an abstract type none of a choice's keys.
_SPECIALISATIONS: dict[str, tuple[str, ...]] = {
    "Quantity": ("Age", "Count", "Distance", "Duration"),
    "string": ("Code", "Id", "Markdown"),
    "uri": ("Url", "Canonical", "Oid", "Uuid"),
    "integer": ("PositiveInt", "UnsignedInt"),
}
_NOT_CHOICE_TYPES = frozenset({
    "Base64Binary", "Canonical", "Code", "Id", "Instant", "Markdown", "Oid", "PositiveInt", "UnsignedInt",
    "Uri", "Url", "Uuid", "Xhtml", "Element", "BackboneElement", "DataType", "PrimitiveType",
})  # fmt: skip


def _children_of_keys(items: list, keys: list[str]) -> list:
    out: list = []
    for key in keys:
        out.extend(_children_exact(items, key))
    return out


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<op><=|>=|!=|[=<>|()+.,&])"
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
        while self.peek() in ("+", "&"):
            op = self.take()[1]
            left = (_plus if op == "+" else _concat)(left, self.union())
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
                if kind != "name" or type_name in _NOT_CHOICE_TYPES:
                    raise ValueError("ofType")
                suffixes = (type_name[:1].upper() + type_name[1:], *_SPECIALISATIONS.get(type_name, ()))
                keys = [name + suffix for suffix in suffixes]
                if len(keys) == 1:
                    current = (lambda c, k: lambda n, env: _children_exact(c(n, env), k))(current, keys[0])
                else:
                    current = (lambda c, ks: lambda n, env: _children_of_keys(c(n, env), ks))(current, keys)
            elif current is base and not literal_base and name[:1].isupper():
                # `Patient.active`: a leading type name filters the focus (FHIRPath §4.1); a
                # datatype's node carries no type of its own, and its constraints name its type
                current = (
                    lambda t: (
                        lambda n, env: [n] if type(n) is dict and n.get("resourceType") in (t, None) else []
                    )
                )(name)
            elif current is base and not literal_base:  # a step from the focus: its schema is known
                current = (lambda nm, un: lambda n, env: _first_step(n, nm, env.get("groups"), un))(
                    name, "_" + name
                )
            else:
                current = (lambda c, nm, un: lambda n, env: _children(c(n, env), nm, None, un))(
                    current, name, "_" + name
                )
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
        if name in ("all", "where", "select"):
            criteria = self.criteria()
            return {"all": _all, "where": _where, "select": _select}[name](base, criteria)
        if name == "descendants":
            self.expect(")")
            return _descendants(base)
        if name == "isDistinct":
            self.expect(")")
            return _is_distinct(base)
        if name == "intersect" and self._absolute_path_argument():
            # Only an absolute argument (`%resource.code.coding`): which focus a relative one
            # is evaluated on is the full engine's business.
            return _intersect(base, self.criteria())
        if name in ("contains", "startsWith", "endsWith"):
            kind, arg = self.take()
            self.expect(")")
            if kind != "str":
                raise ValueError(name)
            text = arg[1:-1]
            method = {"contains": str.__contains__, "startsWith": str.startswith, "endsWith": str.endswith}[
                name
            ]
            return _string_test(base, lambda value: method(value, text), name)
        # Outside the subset: parsed (so the rest of the expression still compiles), not run.
        if self.peek() != ")":
            self.implies()
            while self.peek() == ",":
                self.take()
                self.implies()
        self.expect(")")
        return _unsupported(name)

    def _absolute_path_argument(self) -> bool:
        """Is the argument ahead `%resource` or `%rootResource` followed only by `.name` steps?"""
        i = self.i
        if i >= len(self.t) or self.t[i] not in (("var", "%resource"), ("var", "%rootResource")):
            return False
        i += 1
        while i + 1 < len(self.t) and self.t[i] == ("op", ".") and self.t[i + 1][0] == "name":
            i += 2
        return i < len(self.t) and self.t[i] == ("op", ")")
