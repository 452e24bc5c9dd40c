"""FHIRPath constraints (invariants) of a plan, evaluated at a node during the walk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhirschema.validator.findings import Finding, finding

if TYPE_CHECKING:
    from fhirschema.validator.plans import Plan


def check_constraints(data: Any, plan: Plan, invariants: Any, resources: list[dict[str, Any]], root: Any,
                      path: list[str | int], start: int, terminology: Any = None) -> list[Finding]:  # fmt: skip
    """The plan's FHIRPath constraints on `data`: the native subset first, fhirpathpy (`invariants`)
    for the rest. `resources` enclose `data` (outermost first), `root` is %rootResource;
    `path[start:]` leads from the innermost one to `data`; `terminology` answers memberOf()."""
    out: list[Finding] = []
    resource = resources[-1] if resources else data
    env = {"root": root, "resource": resource, "groups": plan.groups}
    type_name: str | None = None
    for key, c, origin, fast, shortcut in plan.checks():
        # The guard first: it proves the common case (no `contained`) without evaluating anything.
        if shortcut is not None and shortcut(data):
            continue
        verdict = fast(data, env) if fast is not None else None
        if verdict is None:  # outside the native subset: the full FHIRPath engine
            if type_name is None:
                type_name = _type_name(plan, resource, bool(resources), path[start:])
            bundle = resources[0] if resources and resources[0].get("resourceType") == "Bundle" else None
            verdict = invariants.evaluate(
                c["expression"], data, resource=resource, root=root, path=type_name, bundle=bundle,
                terminology=terminology,
            ).ok  # fmt: skip
        if verdict is False:
            severity = "warning" if c.get("severity") == "warning" else "error"
            out.append(finding("fs601", f"constraint {key} failed: {c.get('human') or c['expression']}",
                               severity=severity, profile=origin))  # fmt: skip
    return out


def primitive_constraints(value: Any, type_name: str | None, constraints: list[tuple[str, dict[str, Any], str | None]],
                          invariants: Any, resource: dict[str, Any], root: Any,
                          terminology: Any = None) -> list[Finding]:  # fmt: skip
    """Constraints declared on a primitive element, on one of its values (the reference evaluates
    them as every element's: a profile's invariant on `HumanName.given`). The value is typed by
    its element (`type_name`, e.g. dateTime): untyped, it would be a System.String, and
    `$this as dateTime` (vs-1) or `$this is DateTime` (us-core-1) would never apply."""
    out: list[Finding] = []
    for key, c, origin in constraints:
        verdict = invariants.evaluate(
            c["expression"], value, resource=resource, root=root, path=type_name, terminology=terminology
        )
        if verdict.ok is False:
            severity = "warning" if c.get("severity") == "warning" else "error"
            out.append(finding("fs601", f"constraint {key} failed: {c.get('human') or c['expression']}",
                               severity=severity, profile=origin))  # fmt: skip
    return out


def _type_name(plan: Plan, resource: dict[str, Any], enclosed: bool, below: list[str | int]) -> str | None:
    type_name = plan.type_name
    if type_name in (None, "BackboneElement", "Element") and enclosed:
        # Backbone elements are typed by their path (Parameters.parameter), not by a type name.
        keys = [p for p in below if isinstance(p, str)]
        type_name = (
            ".".join([resource.get("resourceType", ""), *keys]) if keys else resource.get("resourceType")
        )
    return type_name
