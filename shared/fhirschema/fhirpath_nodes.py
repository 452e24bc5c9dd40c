"""A FHIR primitive and its `_x` object as ONE FHIRPath node, for every navigation (issue 10).

FHIR JSON splits a primitive element in two: `"given": ["A", "B"], "_given": [{...}, null]` (R4
§2.6.2.4), but FHIRPath's FHIR model has one element each, with a value, an id and extensions.
fhirpathpy 2.2.x keeps the two apart: a step to `given` yields the values, then the `_given`
objects, then a node per `null`, so `given.count()` was 4, `given[0].extension(url)` empty,
`children()` skipped `_given` and `descendants()` held the objects as elements of their own.

fhirpathpy's ResourceNode has the hook (`_data`: "additional data stored in a property named with
'_' prepended", as fhirpath.js's model has it) but 2.2.x never reads it. Here every step builds
the node with it: the value is the node's data (None when the element has only extensions), the
`_x` object its `_data`; a step to `id` or `extension` from a primitive reads `_data`. The step is
fhirpathpy's MemberInvocation evaluator, a module-level table with no per-call hook: it is
replaced once, and keeps fhirpathpy's own for any evaluation whose context lacks `NODES_FLAG`
(ours set it), so other users of fhirpathpy in the process are not changed. children(),
descendants() and extension() are functions of our table (FHIR_FUNCTIONS). Element paths are
typed as fhirpathpy types them (choice suffix, pathsDefinedElsewhere, path2Type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhirpathpy.engine import do_eval, util
from fhirpathpy.engine.evaluators import create_reduce_member_invocation, evaluators, member_invocation
from fhirpathpy.engine.nodes import ResourceNode

__all__ = ["NODES_FLAG", "NODE_FUNCTIONS", "has_value"]

# Set in an evaluation's context: navigation there merges a primitive with its `_x` object.
NODES_FLAG = "fhirschema primitive nodes"


def _element_nodes(value: Any, extras: Any, path: str, full: str) -> list[ResourceNode]:
    """The elements of one property: values and `_x` objects paired by position."""
    if extras is None:  # the common case: no `_x`
        if isinstance(value, list):
            return [
                ResourceNode(v, path, None, f"{full}[{i}]", i) for i, v in enumerate(value) if v is not None
            ]
        return [] if value is None else [ResourceNode(value, path, None, full)]
    if isinstance(value, list) or isinstance(extras, list):
        values = value if isinstance(value, list) else []
        more = extras if isinstance(extras, list) else []
        out = []
        for i in range(max(len(values), len(more))):
            v = values[i] if i < len(values) else None
            extra = more[i] if i < len(more) else None
            if v is not None or isinstance(extra, Mapping):  # a null in both arrays is no element
                out.append(ResourceNode(v, path, _as_extra(extra), f"{full}[{i}]", i))
        return out
    if value is None and not isinstance(extras, Mapping):
        return []
    return [ResourceNode(value, path, _as_extra(extras), full)]


def _as_extra(extra: Any) -> Mapping | None:
    return extra if isinstance(extra, Mapping) else None


def _typed(model: dict, path: str, key: str) -> str:
    if key == "extension":
        return "Extension"
    return model["path2Type"].get(path, path)


def _step(model: dict, res: ResourceNode, key: str) -> list[ResourceNode] | None:
    """`res.key` as one node per element; None: not a FHIR element, fhirpathpy's step decides."""
    data = res.data
    if not isinstance(data, Mapping):
        if isinstance(res._data, Mapping) and key in ("id", "extension"):  # a primitive's own
            return _step(model, ResourceNode(res._data, "Element", propName=res.propName), key)
        return None
    path = f"{res.path}.{key}" if res.path else f"_.{key}"
    full = (f"{res.propName}.{key}" if res.propName else path).replace("_", "")
    path = model["pathsDefinedElsewhere"].get(path, path)
    field = key
    choices = model["choiceTypePaths"].get(path)
    if choices:
        for suffix in choices:
            if data.get(key + suffix) is not None or data.get(f"_{key}{suffix}") is not None:
                field, path = key + suffix, path + suffix
                break
        else:
            return []
    return _element_nodes(data.get(field), data.get("_" + field), _typed(model, path, key), full)


def _member_invocation(ctx: dict, parent: Any, node: dict) -> list:
    if NODES_FLAG not in ctx or not isinstance(parent, list):
        return member_invocation(ctx, parent, node)
    key = do_eval(ctx, parent, node["children"][0])[0].replace("`", "")
    model = ctx["model"]
    if util.is_capitalized(key):  # `Patient.x`: a type name filters resources (as fhirpathpy does)
        try:
            return [ResourceNode.create_node(x, key) for x in parent if x["resourceType"] == key]
        except TypeError:
            pass
    out: list = []
    for item in parent:
        res = ResourceNode.create_node(item)
        found = _step(model, res, key)
        out.extend(found if found is not None else create_reduce_member_invocation(model, key)([], res))
    return out


evaluators["MemberInvocation"] = _member_invocation


def _children(ctx: dict, coll: list) -> list:
    """children(): every element of every property; a primitive's are its id and extensions."""
    model = ctx["model"]
    out: list = []
    for item in coll:
        res = ResourceNode.create_node(item)
        data = res.data
        if not isinstance(data, Mapping):
            if isinstance(res._data, Mapping):
                res, data = ResourceNode(res._data, "Element", propName=res.propName), res._data
            else:
                continue
        keys = dict.fromkeys(k[1:] if k[:1] == "_" else k for k in data)  # `_x` alone: x's element
        for key in keys:
            path = f"{res.path}.{key}" if res.path else key
            full = (f"{res.propName}.{key}" if res.propName else path).replace("_", "")
            path = model["pathsDefinedElsewhere"].get(path, path)
            out.extend(_element_nodes(data.get(key), data.get("_" + key), _typed(model, path, key), full))
    return out


def _descendants(ctx: dict, coll: list) -> list:
    out: list = []
    level = _children(ctx, coll)
    while level:
        out.extend(level)
        level = _children(ctx, level)
    return out


def _extension(ctx: dict, coll: list, url: Any) -> list:
    """extension(url): `extension.where(url = url)`, on elements and primitives alike."""
    out = []
    for item in coll:
        res = ResourceNode.create_node(item)
        element = res.data if isinstance(res.data, Mapping) else res._data
        if isinstance(element, Mapping):
            for ext in element.get("extension") or ():
                if isinstance(ext, Mapping) and ext.get("url") == url:
                    out.append(ResourceNode.create_node(ext, "Extension"))
    return out


def has_value(item: object) -> bool:
    """Is `item` an element with a value (not one with only an id and extensions)?"""
    return util.get_data(item) is not None


NODE_FUNCTIONS: dict[str, dict] = {
    "children": {"fn": _children},
    "descendants": {"fn": _descendants},
    "extension": {"fn": _extension, "arity": {1: ["String"]}},
}
