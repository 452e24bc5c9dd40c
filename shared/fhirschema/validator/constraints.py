"""FHIRPath constraints (invariants) of a plan, evaluated at a node during the walk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhirschema.validator.plans import Plan
    from fhirschema.validator.walk import Run


def check_constraints(run: Run, data: Any, plan: Plan) -> None:
    """The plan's FHIRPath constraints on `data`: the native subset first, fhirpathpy for the rest."""
    resource = run.resources[-1] if run.resources else data
    root = run.resources[0] if run.resources else data
    env = {"root": root, "resource": resource, "groups": plan.groups}
    type_name: str | None = None
    for key, c, origin, fast, shortcut in plan.checks():
        # The guard first: it proves the common case (no `contained`) without evaluating anything.
        if shortcut is not None and shortcut(data):
            continue
        verdict = fast(data, env) if fast is not None else None
        if verdict is None:  # outside the native subset: the full FHIRPath engine
            if type_name is None:
                type_name = _type_name(run, plan, resource)
            verdict = run.v.invariants.evaluate(
                c["expression"], data, resource=resource, root=root, path=type_name
            ).ok
        if verdict is False:
            severity = "warning" if c.get("severity") == "warning" else "error"
            run.issue("fs601", f"constraint {key} failed: {c.get('human') or c['expression']}",
                       severity=severity, profile=origin)  # fmt: skip


def _type_name(run: Run, plan: Plan, resource: dict[str, Any]) -> str | None:
    type_name = plan.type_name
    if type_name in (None, "BackboneElement", "Element") and run.resources:
        # Backbone elements are typed by their path (Parameters.parameter), not by a type name.
        keys = [p for p in run.path[run.starts[-1] :] if isinstance(p, str)]
        type_name = (
            ".".join([resource.get("resourceType", ""), *keys]) if keys else resource.get("resourceType")
        )
    return type_name
