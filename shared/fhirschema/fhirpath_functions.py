"""FHIR's FHIRPath additions (R4 §2.1.9.1) and operator overrides, as a fhirpathpy user function table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fhirpathpy.engine.invocations import invocation_registry, logic
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.engine.util import get_data

from fhirschema.fhirpath_nodes import NODE_FUNCTIONS, has_value
from fhirschema.fhirpath_types import TYPE_FUNCTIONS

# FHIR's additional FHIRPath functions (R4 §2.1.9.1). They receive fhirpathpy's context and the
# input collection of ResourceNodes/values, then the evaluated arguments.


def _primitives(inputs: list) -> list:
    """Primitive values of the input (an element with only extensions has none)."""
    return [v for v in (get_data(i) for i in inputs) if v is not None and not isinstance(v, dict)]


def _has_value(ctx: dict, inputs: list) -> bool:
    return len(_primitives(inputs)) == 1


def _get_value(ctx: dict, inputs: list) -> list:
    values = _primitives(inputs)
    return values if len(values) == 1 else []


def _true(ctx: dict, inputs: list, *args: object) -> list:
    """Checked elsewhere by the validator (narrative, profiles, terminology): never fail here."""
    return [True] if inputs else []


# The variable under which an evaluation gets the validator's terminology (a name no FHIRPath
# expression can write, so data cannot reach it).
TERMINOLOGY_VAR = "terminology service"


def _member_of(ctx: dict, inputs: list, value_set: object) -> list:
    """memberOf(vs) on a code, Coding or CodeableConcept, by the offline terminology: true when
    one code is in the value set, false when every code is known not to be, else empty (a value
    set that cannot be expanded offline, or no terminology: not judged)."""
    terminology = ctx["vars"].get(TERMINOLOGY_VAR)
    urls = [get_data(v) for v in (value_set if isinstance(value_set, list) else [value_set])]
    if terminology is None or len(urls) != 1 or not isinstance(urls[0], str) or len(inputs) != 1:
        return [True] if inputs else []
    data = get_data(inputs[0])
    if isinstance(data, str):
        codes: list[tuple[object, object]] = [(None, data)]
    elif isinstance(data, dict):
        codings = data.get("coding") if "coding" in data else [data]
        codes = [(c.get("system"), c.get("code")) for c in codings or () if isinstance(c, dict)]
    else:
        return []
    statuses = {
        terminology.check(urls[0], system if isinstance(system, str) else None, code).status
        for system, code in codes
        if isinstance(code, str)
    }
    if "member" in statuses:
        return [True]
    return [False] if statuses == {"not-member"} else []


def _empty(ctx: dict, inputs: list, *args: object) -> list:
    """Unknown offline (e.g. subsumption): empty, which an invariant treats as success."""
    return []


def _same(ctx: dict, inputs: list, *args: object) -> list:
    return inputs


def _resolve(ctx: dict, inputs: list) -> list:
    """Contained (`#id`) and same-Bundle (`fullUrl`) references only; anything else is empty."""
    found = []
    variables = ctx["vars"]
    for item in inputs:
        data = get_data(item)
        ref = data.get("reference") if isinstance(data, dict) else data
        if not isinstance(ref, str) or not ref:
            continue
        target = None
        if ref.startswith("#"):
            for owner in (variables.get("resource"), variables.get("rootResource")):
                target = _contained(owner, ref[1:])
                if target is not None:
                    break
        else:
            target = _bundle_entry(variables.get("bundle") or variables.get("rootResource"), ref)
        if target is not None:
            found.append(ResourceNode.create_node(target))
    return found


def _contained(owner: object, rid: str) -> dict | None:
    if not isinstance(owner, dict):
        return None
    for res in owner.get("contained") or ():
        if isinstance(res, dict) and res.get("id") == rid:
            return res
    return None


def _bundle_entry(bundle: object, ref: str) -> dict | None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, dict):
            continue
        res = entry.get("resource")
        if not isinstance(res, dict):
            continue
        full = entry.get("fullUrl")
        if full == ref or (full and full.endswith("/" + ref)):
            return res
        if f"{res.get('resourceType')}/{res.get('id')}" == ref:
            return res
    return None


def _boolean(value: list) -> bool | list:
    """FHIRPath singleton evaluation: one boolean is itself, any other single item is true.

    fhirpathpy rejects non-boolean operands of `or`/`and`, which breaks US Core's
    `practitioner or organization or ...` (us-core-13).
    """
    if not value:
        return []
    if len(value) > 1:
        raise ValueError(f"boolean operator applied to a collection of {len(value)} items")
    data = get_data(value[0])
    return data if isinstance(data, bool) else True


def _logic(op: Callable[[dict, Any, Any], Any]) -> dict:
    def fn(ctx: dict, left: list, right: list) -> Any:
        return op(ctx, _boolean(left), _boolean(right))

    return {"fn": fn, "arity": {2: ["Any", "Any"]}}


def _values_only(coll: list) -> list:
    """Drop elements that have only extensions: they have no value to compare.

    Without this, per-1 on `{"_start": {...}, "end": "2013"}` raises instead of holding.
    """
    return [item for item in coll if has_value(item)]


def _comparison(name: str) -> dict:
    base = cast(dict[str, Any], invocation_registry[name])

    def fn(ctx: dict, left: list, right: list) -> Any:
        left, right = _values_only(left), _values_only(right)
        if "nullable" in base and (not left or not right):
            return []
        return base["fn"](ctx, left, right)

    return {"fn": fn, "arity": base["arity"]}


_ONE_ARG = {1: ["AnyAtRoot"]}
FHIR_FUNCTIONS: dict[str, dict] = {
    "or": _logic(logic.or_op),
    "and": _logic(logic.and_op),
    "xor": _logic(logic.xor_op),
    "implies": _logic(logic.implies_op),
    **{op: _comparison(op) for op in ("=", "!=", "~", "!~", "<", "<=", ">", ">=")},
    **TYPE_FUNCTIONS,
    **NODE_FUNCTIONS,
    "hasValue": {"fn": _has_value},
    "getValue": {"fn": _get_value},
    "htmlChecks": {"fn": _true},
    "conformsTo": {"fn": _true, "arity": _ONE_ARG},
    "memberOf": {"fn": _member_of, "arity": _ONE_ARG},
    "subsumes": {"fn": _empty, "arity": _ONE_ARG},
    "subsumedBy": {"fn": _empty, "arity": _ONE_ARG},
    "resolve": {"fn": _resolve},
    "elementDefinition": {"fn": _empty},
    "slice": {"fn": _empty, "arity": {2: ["AnyAtRoot", "AnyAtRoot"]}},
    "checkModifiers": {"fn": _same, "arity": _ONE_ARG},
    "hasTemplateIdOf": {"fn": _empty, "arity": _ONE_ARG},
}
