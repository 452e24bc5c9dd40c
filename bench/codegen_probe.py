"""Measure before choosing (issue 3 §4), the other route: generated Python source per schema set.

Generates, from the engine's compiled plans, one Python function per plan in the style of
fastjsonschema (an if/elif chain over the keys present, JSON kinds, cardinality of arrays, the
lexical rule of each primitive, recursion into complex values) for the same 897 resources as
bench/validate_bench.py, and times it. It answers only "is the structure fine?" (no issues,
paths or messages; nothing semantic: no terminology, slicing, references, extensions by
definition; nested resources and `_x` companions not walked): a lower bound for the route.

    .venv/bin/python bench/codegen_probe.py [--shared ../shared] [--runs 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convert_bench import pin_one_core  # bench/ is sys.path[0]
from validate_bench import best_of, load_context, load_corpus

from fhirschema.validator import Validator
from fhirschema.validator.plans import ElementPlan, Plan
from fhirschema.validator.primitives import _LEXICAL, NUMBER_TYPES

REPO = Path(__file__).resolve().parent.parent


class Generator:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.todo: list[Plan] = []
        self.source: list[str] = []
        self.namespace: dict[str, Any] = {}

    def name(self, plan: Plan) -> str:
        if id(plan) not in self.names:
            self.names[id(plan)] = f"p{len(self.names)}"
            self.todo.append(plan)
        return self.names[id(plan)]

    def function(self, plan: Plan, root: bool) -> None:
        lines = [f"def {self.names[id(plan)]}{'r' if root else ''}(d):", "    for k, v in d.items():"]
        branches: list[str] = []
        for key in plan.keys:
            ep = plan.element(key)
            if ep is None or key in plan.excluded or (ep.choices is not None and ep.type is None):
                continue
            body = self.item(ep)
            branch = [f"if k == {key!r}:"]
            if ep.array:
                branch += ["    if type(v) is not list or not v: return False", "    for x in v:"]
                branch += ["        " + b for b in body("x")]
            else:
                branch += ["    " + b for b in body("v")]
            if ep.is_primitive:
                branch += [f"elif k == {'_' + key!r}: pass"]
            branches.append("\n".join(branch))
        if root:
            branches.append("if k == 'resourceType': pass")
        chain = "\nel".join(branches)
        lines += ["        " + line for line in chain.splitlines()] if branches else []
        lines += ["        else: return False" if branches else "        return False", "    return True"]
        self.source.append("\n".join(lines))

    def item(self, ep: ElementPlan) -> Any:
        t = ep.type
        if ep.is_primitive:
            if t == "boolean":
                return lambda x: [f"if {x} is not True and {x} is not False: return False"]
            if t in NUMBER_TYPES:
                return lambda x: [f"if type({x}) is not int and type({x}) is not float: return False"]
            self.namespace[f"L_{t}"] = _LEXICAL.get(t or "", lambda v: True)
            return lambda x: [f"if type({x}) is not str or not L_{t}({x}): return False"]
        typed = t is not None or any(el.get("elementReference") for el, _ in ep.defs)
        if ep.is_resource or not typed:
            return lambda x: [f"if type({x}) is not dict: return False"]
        child = self.name(ep.child())
        return lambda x: [f"if type({x}) is not dict or not {x} or not {child}({x}): return False"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    pin_one_core()
    items = [r for rs in load_corpus(args.shared).values() for r in rs]
    engine = Validator(load_context(args.shared))
    gen = Generator()
    roots = []
    for resource in items:
        schemas = []
        for url in (resource.get("meta") or {}).get("profile") or ():
            schemas += engine.compiler.chain(url)
        plan = engine.compiler.plan(schemas + engine.compiler.chain(resource["resourceType"]))
        gen.name(plan)
        roots.append((plan, resource))
    root_ids = {id(p) for p, _ in roots}
    done: set[int] = set()
    while gen.todo:
        plan = gen.todo.pop()
        if id(plan) not in done:
            done.add(id(plan))
            gen.function(plan, False)
            if id(plan) in root_ids:
                gen.function(plan, True)
    code = "\n\n".join(gen.source)
    exec(compile(code, "<generated>", "exec"), gen.namespace)  # our own generated source
    checks = [(gen.namespace[gen.names[id(p)] + "r"], r) for p, r in roots]
    passed = sum(1 for check, r in checks if check(r))
    best = best_of(args.runs, lambda: [check(r) for check, r in checks])
    ours = best_of(3, lambda: [engine.validate(r) for r in items])
    print(f"{len(items)} resources, {len(gen.names)} plans, {len(code) // 1024} KB of generated source")
    print(f"generated structural check: {len(items) / best:8.0f} res/s ({best / len(items) * 1e6:.1f} µs/resource), "
          f"{passed}/{len(items)} pass")  # fmt: skip
    print(f"our full engine (no invariants, no terminology): {len(items) / ours:8.0f} res/s "
          f"({ours / len(items) * 1e6:.1f} µs/resource)")  # fmt: skip


if __name__ == "__main__":
    main()
