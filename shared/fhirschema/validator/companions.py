"""The `_x` companions of primitive values (their id and extensions), walked with the data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhirschema.validator.plans import Plan
    from fhirschema.validator.walk import Run


def walk_companion(run: Run, data: dict[str, Any], key: str, value: Any, plan: Plan) -> None:
    """`_key`: the id/extension companion of primitive `key` (an object, or an array like the values)."""
    base = key[1:]
    ep = plan.element(base)
    run.path.append(key)
    try:
        if ep is None:
            run.issue("fs201", f"unknown element {key!r}")
            return
        if not ep.is_primitive:
            run.issue("fs401", f"{key}: only primitive elements carry a '_' companion")
            return
        main = data.get(base)
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) != ep.array:
            run.issue("fs401", f"{key} must be {'an array' if ep.array else 'an object'} like {base}")
            return
        if not isinstance(value, list) and not isinstance(value, dict):
            run.issue("fs401", f"{key} must be an object with id/extension")
            return
        if isinstance(value, list) and isinstance(main, list) and len(value) != len(main):
            run.issue("fs402", f"{key} has {len(value)} items but {base} has {len(main)}")
        element_plan = run.config.compiler.element_plan()
        for i, item in enumerate(items):
            if item is None:
                continue
            if isinstance(value, list):
                run.path.append(i)
            if isinstance(item, dict) and len(item) == 1 and "id" in item and main is None:
                # ele-1: no value and no extension; an id alone is not content
                run.issue("fs202", f"{base} has neither a value nor extensions (only an id)")
            elif isinstance(item, dict) and item:
                run.companions.append(ep.type)
                run.node(item, element_plan)
                run.companions.pop()
            else:
                run.issue("fs202", "expected an object with id/extension")
            if isinstance(value, list):
                run.path.pop()
    finally:
        run.path.pop()
