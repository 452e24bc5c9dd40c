"""Measure before choosing (issue 3 §4): how fast would pydantic-core run the STRUCTURAL part?

Builds pydantic-core validators from the engine's compiled plans (keys, JSON kinds, arrays,
nesting, unknown keys forbidden, recursion through definitions) for the same 897-resource corpus
as bench/validate_bench.py and times them. Lexical rules are approximated (non-empty strings),
and nothing semantic (terminology, slicing, references, extensions by definition) is done: this
is a lower bound for a hybrid "structure in Rust, the rest in Python" design, not a validator.

    .venv/bin/python bench/pydantic_core_probe.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs
from validate_bench import best_of  # bench/ is sys.path[0]

from fhirschema.context import FhirContext
from fhirschema.validator import Validator
from fhirschema.validator.plans import ElementPlan, Plan

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fhir"
NUMBERS = {"integer", "unsignedInt", "positiveInt"}


class Builder:
    def __init__(self) -> None:
        self.defs: dict[int, Any] = {}
        self.building: set[int] = set()

    def plan(self, plan: Plan, root_type: str | None = None) -> Any:
        ref = f"p{id(plan)}"
        if id(plan) not in self.defs and id(plan) not in self.building:
            self.building.add(id(plan))
            fields: dict[str, Any] = {}
            for key in plan.keys:
                ep = plan.element(key)
                if ep is None or (ep.choices is not None and ep.type is None):
                    continue
                fields[key] = cs.typed_dict_field(self.element(ep), required=False)
                if ep.is_primitive:
                    fields["_" + key] = cs.typed_dict_field(cs.any_schema(), required=False)
            if root_type:
                fields["resourceType"] = cs.typed_dict_field(cs.literal_schema([root_type]))
            self.defs[id(plan)] = cs.typed_dict_schema(fields, extra_behavior="forbid", ref=ref)
            self.building.discard(id(plan))
        return cs.definition_reference_schema(ref)

    def element(self, ep: ElementPlan) -> Any:
        if ep.is_primitive:
            t = ep.type
            if t == "boolean":
                item: Any = cs.bool_schema(strict=True)
            elif t in NUMBERS:
                item = cs.int_schema(strict=True)
            elif t == "decimal":
                item = cs.union_schema([cs.int_schema(strict=True), cs.float_schema(strict=True)])
            else:
                item = cs.str_schema(strict=True, min_length=1)
        elif ep.is_resource or ep.type is None:
            item = cs.any_schema()
        else:
            item = self.plan(ep.child())
        return cs.list_schema(item, min_length=1) if ep.array else item


def main() -> None:
    ctx = FhirContext.from_specs(
        [
            SHARED / "packages" / "hl7.fhir.us.core#6.1.0.tgz",
            SHARED / "packages" / "hl7.fhir.r4.core#4.0.1.tgz",
        ],
        with_dependencies=False,
    )
    engine = Validator(ctx)
    items = [orjson.loads(f.read_bytes()) for f in sorted((SHARED / "examples" / "r4-spec").glob("*.json"))]
    items += [
        orjson.loads(f.read_bytes())
        for f in sorted((SHARED / "examples" / "hl7.fhir.us.core#6.1.0").glob("*.json"))
    ]
    builder = Builder()
    validators: dict[int, SchemaValidator] = {}
    plans = []
    for resource in items:
        rtype = resource["resourceType"]
        schemas = []
        for url in (resource.get("meta") or {}).get("profile") or ():
            schemas += engine.compiler.chain(url)
        schemas += engine.compiler.chain(rtype)
        plan = engine.compiler.plan(schemas)
        if id(plan) not in validators:
            root = builder.plan(plan, rtype)
            validators[id(plan)] = SchemaValidator(cs.definitions_schema(root, list(builder.defs.values())))
        plans.append(validators[id(plan)])
    passed = 0
    for v, r in zip(plans, items, strict=True):
        try:
            v.validate_python(r)
            passed += 1
        except ValidationError:
            pass

    def structural_pass() -> None:
        for v, r in zip(plans, items, strict=True):
            try:
                v.validate_python(r)
            except ValidationError:
                pass

    best = best_of(3, structural_pass)
    ours = best_of(3, lambda: [engine.validate(r) for r in items])
    print(f"{len(items)} resources, {len(validators)} distinct root plans, {len(builder.defs)} typed dicts")
    print(f"pydantic-core structural pass: {len(items) / best:8.0f} res/s ({best / len(items) * 1e6:.1f} µs/resource), "
          f"{passed}/{len(items)} pass its approximate rules")  # fmt: skip
    print(f"our full engine (no invariants, no terminology): {len(items) / ours:8.0f} res/s "
          f"({ours / len(items) * 1e6:.1f} µs/resource)")  # fmt: skip


if __name__ == "__main__":
    main()
