"""FHIRPath's type operators (`is`, `as`, `ofType`) on FHIR data, as the HL7 validator decides them.

fhirpathpy types a FHIR value by the model (`Observation.effectiveDateTime` is FHIR.dateTime, a
`code` is a FHIR.string) and a System value by its Python type, but never relates the two
namespaces: `effective is DateTime`, written in US Core 6.1.0's us-core-1, and `answer is Boolean`
(R4's que-7) were false on every value. The reference (the HL7 Java validator) compares a FHIR
element's type name with the type specifier ignoring case, so a FHIR primitive is also named by
the System type of its own name, unqualified: dateTime is DateTime, boolean is Boolean. That is the
rule here, for all three operators. FHIR names keep the model's inheritance (a `code` is a
`string`); a qualified `System.DateTime` names the System type alone, which FHIR data is not
(FHIRPath: FHIR.dateTime and System.DateTime are different types, and the reference's name
comparison never matches the qualified name); nor are the FHIR-to-System mapping's other pairs
matched (an instant is no `DateTime`, a code no `String`), as in the reference.
"""

from __future__ import annotations

from typing import Any

from fhirpathpy.engine.nodes import TypeInfo

__all__ = ["TYPE_FUNCTIONS", "conforms"]

# System type names that, unqualified, also name the FHIR primitive of the same name ignoring case.
_SYSTEM_PRIMITIVES = frozenset({"Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time"})


def conforms(item: object, spec: TypeInfo, model: Any) -> bool:
    """Is `item` (a ResourceNode or a System value) of the type `spec` names?"""
    TypeInfo.model = model  # fhirpathpy's type checks read this global
    actual = TypeInfo.from_value(item)
    if actual is None:
        return False
    if actual.is_(spec):
        return True
    return (
        actual.namespace == TypeInfo.FHIR
        and spec.namespace is None
        and spec.name in _SYSTEM_PRIMITIVES
        and actual.name.lower() == spec.name.lower()
    )


def _one_element(coll: list, operator: str) -> object | None:
    """The single item `is`/`as` apply to (a primitive and its `_x` object are one node:
    fhirpath_nodes.py)."""
    if not coll:
        return None
    if len(coll) > 1:
        raise ValueError(f"'{operator}' needs a single item, got {len(coll)}")
    return coll[0]


def _is(ctx: dict, coll: list, spec: TypeInfo) -> list:
    item = _one_element(coll, "is")
    return [] if item is None else [conforms(item, spec, ctx.get("model"))]


def _as_operator(ctx: dict, coll: list, spec: TypeInfo) -> list:
    item = _one_element(coll, "as")
    return [item] if item is not None and conforms(item, spec, ctx.get("model")) else []


def _as_function(ctx: dict, coll: list, spec: TypeInfo) -> list:
    """`as(T)` filters like `ofType(T)`: R4's dom-3 applies it to `descendants()`, and
    fhirpathpy (following later FHIRPath) raises on a collection of more than one item."""
    return _of_type(ctx, coll, spec)


def _of_type(ctx: dict, coll: list, spec: TypeInfo) -> list:
    model = ctx.get("model")
    return [item for item in coll if conforms(item, spec, model)]


_TYPE = ["TypeSpecifier"]
TYPE_FUNCTIONS: dict[str, dict] = {
    "is": {"fn": _is, "arity": {1: _TYPE}},
    "isOp": {"fn": _is, "arity": {2: ["Any", *_TYPE]}},
    "as": {"fn": _as_function, "arity": {1: _TYPE}},
    "asOp": {"fn": _as_operator, "arity": {2: ["Any", *_TYPE]}},
    "ofType": {"fn": _of_type, "arity": {1: _TYPE}},
}
