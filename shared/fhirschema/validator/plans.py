"""Schema sets compiled into plans: the merge of every schema that applies at a node (SPEC §3).

A plan is built once per distinct schema set and cached; validating the second resource of a
(type, profiles) pair reuses every plan the first one built.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from fhirschema.fastpath import compile_subset, guard
from fhirschema.validator.primitives import PRIMITIVES, SYSTEM_TYPES, Primitive, checker
from fhirschema.validator.slices import Slicing
from fhirschema.validator.values import Limits

# ElementPlan.hot: see walk.Run.node. Final: compiled, these are C constants, not global lookups.
HOT_NESTED: Final = 1
HOT_PLAIN: Final = 2
HOT_CODED: Final = 3
BINDING_RANK = {"required": 0, "extensible": 1, "preferred": 2, "example": 3}
# Binding strengths the validator judges ("example" is not), with the issue each one raises.
BINDING_SEVERITY = {
    "required": ("fs501", "error"),
    "extensible": ("fs503", "warning"),
    "preferred": ("fs502", "information"),
}
CODE_TYPES = frozenset(("code", "string", "uri", "Coding", "CodeableConcept", "Quantity"))
RESOURCE_SLOTS = frozenset(("Resource", "DomainResource"))
# "Has a value or children" rules are enforced structurally (empty objects are rejected).
UNKNOWN_KEYS: Final = 256  # unknown keys remembered per plan (see Plan.element)
UNKNOWN_REFS: Final = 10_000  # misses remembered by Compiler.chain
STRUCTURAL_CONSTRAINTS = frozenset(("ele-1", "ext-1"))


_ELEMENT: dict[str, Any] = {
    "elements": {"id": {"type": "string"}, "extension": {"type": "Extension", "array": True}},
}


class Resolver(Protocol):
    def schema(self, ref: str) -> dict[str, Any] | None: ...


class ElementPlan:
    """One key of a plan: the merge of that element across the schema set."""

    __slots__ = (
        "_child0",
        "_children",
        "_ref_types",
        "_ref_types_known",
        "array",
        "binding",
        "bound",
        "choice_of",
        "choices",
        "compiler",
        "constraints",
        "defs",
        "element_profiles",
        "fixed",
        "hot",
        "is_extension",
        "is_primitive",
        "is_reference",
        "is_resource",
        "key",
        "limits",
        "max",
        "min",
        "nested",
        "patterns",
        "plain",
        "prim",
        "profiles",
        "refers",
        "slicing",
        "type",
        "type_missing",
        "url",
        "value_checks",
        "verdicts",
    )  # fmt: skip

    def __init__(self, key: str, defs: list[tuple[dict[str, Any], str | None]], compiler: Compiler) -> None:
        self.key = key
        self.defs = defs  # (element dict, url of the schema it came from)
        self.compiler = compiler
        self._children: dict[tuple[int, ...], Plan] = {}
        self.type_missing = False
        self.type: str | None = None
        self.array = False
        self.min = 0
        self.max: int | None = None
        self.choices: set[str] | None = None
        self.choice_of: str | None = None
        self.fixed: list[tuple[Any, str | None]] = []
        self.patterns: list[tuple[Any, str | None]] = []
        self.binding: tuple[dict[str, Any], str | None] | None = None
        self.refers: list[list[str]] = []
        self.profiles: list[str] = []
        self.url: str | None = None
        self.slicing: Slicing | None = None
        self.limits: Limits | None = None  # minValue/maxValue, lengths, value presence
        for el, origin in defs:
            if self.limits is None:
                limits = Limits()
                if limits.add(el, origin):
                    self.limits = limits
            else:
                self.limits.add(el, origin)
            if self.type is None and el.get("type"):
                t = el["type"]
                self.type = SYSTEM_TYPES.get(t, t)
            if el.get("min"):
                self.min = max(self.min, el["min"])
            if el.get("max") is not None:
                self.max = el["max"] if self.max is None else min(self.max, el["max"])
            if el.get("choices") is not None:
                c = set(el["choices"])
                self.choices = c if self.choices is None else self.choices & c
            if el.get("choiceOf"):
                self.choice_of = el["choiceOf"]
            if "fixed" in el:
                self.fixed.append((el["fixed"].get("value"), origin))
            if "pattern" in el:
                self.patterns.append((el["pattern"].get("value"), origin))
            b = el.get("binding")
            if b and b.get("valueSet"):
                rank = BINDING_RANK.get(str(b.get("strength")), 9)
                if self.binding is None or rank < BINDING_RANK.get(str(self.binding[0].get("strength")), 9):
                    self.binding = (b, origin)
            if el.get("refers"):
                self.refers.append(el["refers"])
            if el.get("profiles"):
                self.profiles.extend(p for p in el["profiles"] if p not in self.profiles)
            if el.get("url") and not self.url:
                self.url = el["url"]
            if el.get("slicing"):
                if self.slicing is None:
                    self.slicing = Slicing()
                self.slicing.add(el["slicing"], origin)
        # Whether it repeats is the base's: a profile's `max: *` cannot make a single-valued element
        # repeat. Definitions that declare the type (the base always does) decide.
        typed = [el for el, _ in defs if el.get("type")]
        self.array = any(el.get("array") for el in (typed or [el for el, _ in defs]))
        # Type profiles that name one of their elements (a library of slices): that element's
        # schema applies, not the profile's root (a Composition's, for a section).
        self.element_profiles: list[dict[str, Any]] = []
        for el, _ in defs:
            for url, path in (el.get("profileElements") or {}).items():
                found = compiler.profile_element(url, path)
                if found is not None:
                    self.element_profiles.append(found)
                if url in self.profiles:
                    self.profiles.remove(url)
        if self.slicing is not None:
            for sl in self.slicing.slices.values():
                for schema in list(sl.schemas):
                    for url, path in (schema.get("profileElements") or {}).items():
                        found = compiler.profile_element(url, path)
                        if found is not None:
                            sl.schemas.append(found)
            self.slicing.finish(key)
        self.is_resource = self.type in RESOURCE_SLOTS
        self.is_primitive = self.type in PRIMITIVES or (self.type is not None and self.type[:1].islower())
        self.prim: Primitive | None = checker(self.type) if self.is_primitive and self.type else None
        # A primitive's own constraints (a complex value's are its child plan's): the most specific
        # definition of each key wins, as in Plan. The narrative's are checked natively (xhtml).
        self.constraints: list[tuple[str, dict[str, Any], str | None]] = []
        if self.prim is not None and self.type != "xhtml":
            seen: set[str] = set()
            # `rule`, not `c`: compiled, a name keeps the type of its first use (a set above)
            for el, origin in defs:
                for name, rule in (el.get("constraint") or {}).items():
                    if name not in seen and name not in STRUCTURAL_CONSTRAINTS and rule.get("expression"):
                        seen.add(name)
                        self.constraints.append((name, rule, origin))
        # xhtml: the narrative's constraints (txt-1, txt-2) are checked with the value
        self.value_checks = bool(
            self.fixed
            or self.patterns
            or self.binding is not None
            or self.limits is not None
            or self.type == "xhtml"
            or bool(self.constraints)
        )
        # A binding the validator judges: a strength with a severity, on a type that carries codes.
        self.bound = (
            self.binding is not None
            and self.binding[0].get("strength") in BINDING_SEVERITY
            and self.type in CODE_TYPES
        )
        self.is_extension = self.type == "Extension" or key in ("extension", "modifierExtension")
        self.is_reference = self.type == "Reference"
        # A primitive with nothing else to check: validated inline by the walk.
        self.plain = self.prim is not None and not self.value_checks and self.slicing is None
        # A complex value whose only checks are those of its own children.
        self.nested = (
            self.type is not None
            and not self.is_primitive
            and not self.is_resource
            and not self.is_extension
            and not self.is_reference
            and not self.value_checks
            and self.slicing is None
        )
        self._child0: Plan | None = None
        self._ref_types: set[str] | None = None
        self._ref_types_known = False
        self.hot = 0  # set by the plan: which of the walk's hot paths applies (HOT_*), 0 = none
        # Binding and reference verdicts by the values they depend on (see Validator.binding).
        self.verdicts: dict[Any, Any] = {}

    def child(self, extra: tuple[dict[str, Any], ...] = ()) -> Plan:
        """The plan for a value of this element (plus extra schemas: a slice, an extension definition)."""
        if not extra and self._child0 is not None:
            return self._child0
        key = tuple(id(s) for s in extra)
        plan = self._children.get(key)
        if plan is None:
            schemas: list[tuple[dict[str, Any], str | None]] = list(self.defs)
            for s in extra:
                schemas.append((s, s.get("url")))
            if self.type and not self.is_primitive and not self.is_resource:
                type_chain = self.compiler.chain(self.type)
                if not type_chain and not extra:
                    self.type_missing = True
                schemas += type_chain
            for el, _ in self.defs:
                ref = el.get("elementReference")
                if ref:
                    target = self.compiler.element_at(ref)
                    if target is not None:
                        schemas.append((target, ref[0]))
                        t = target.get("type")
                        if t and self.type is None:
                            schemas += self.compiler.chain(t)
            if len(self.profiles) == 1:  # several are alternatives: the walk picks one (Run.pick_profile)
                schemas += self.compiler.chain(self.profiles[0])
            schemas += [(s, None) for s in self.element_profiles]
            plan = self._children[key] = self.compiler.plan(schemas)
        if not extra:
            self._child0 = plan
        return plan

    def ref_types(self) -> set[str] | None:
        """Allowed reference target types (from `refers`), None when unconstrained."""
        if not self._ref_types_known:
            self._ref_types = self._allowed_types()
            self._ref_types_known = True
        return self._ref_types

    def _allowed_types(self) -> set[str] | None:
        allowed: set[str] | None = None
        for refers in self.refers:
            types: set[str] = set()
            for url in refers:
                types |= self.compiler.types_of(url)
            if "Resource" in types or "DomainResource" in types:
                continue
            allowed = types if allowed is None else allowed & types
        return allowed


def _required_slices(slicing: Any) -> bool:
    if not isinstance(slicing, dict) or not isinstance(slicing.get("slices"), dict):
        return False
    return any(isinstance(sl, dict) and (sl.get("min") or 0) > 0 for sl in slicing["slices"].values())


class Plan:
    """The merged view of a schema set at one node."""

    __slots__ = (
        "_checks", "_elements", "compiler", "constraints", "excluded", "groups", "has_constraints", "has_required",
        "keys", "required", "required_items", "schemas", "sliced", "type_name",
    )  # fmt: skip

    def __init__(self, schemas: list[tuple[dict[str, Any], str | None]], compiler: Compiler) -> None:
        self.schemas = schemas
        self.compiler = compiler
        self.keys: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
        self.required: dict[str, str | None] = {}
        self.excluded: dict[str, str | None] = {}
        self.constraints: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.type_name: str | None = next(
            (s["type"] for s, _ in schemas if isinstance(s.get("type"), str)), None
        )
        for schema, origin in schemas:
            for key, el in (schema.get("elements") or {}).items():
                self.keys.setdefault(key, []).append((el, origin))
            for key in schema.get("required") or ():
                self.required.setdefault(key, origin)
            for key in schema.get("excluded") or ():
                self.excluded.setdefault(key, origin)
            for key, c in (schema.get("constraint") or {}).items():
                if key not in STRUCTURAL_CONSTRAINTS and c.get("expression"):
                    self.constraints.setdefault(key, (c, origin))
        # Elements with slices of min >= 1: absent, each such slice is missing (as the reference says)
        self.sliced = [
            key for key, defs in self.keys.items()
            if any(_required_slices(el.get("slicing")) for el, _ in defs)
        ]  # fmt: skip
        self.has_required = bool(self.required) or bool(self.sliced)
        # Walked at every node that has them: a tuple is indexed, a dict's items are not (compiled)
        self.required_items: tuple[tuple[str, str | None], ...] = tuple(self.required.items())
        self.has_constraints = bool(self.constraints)
        self._elements: dict[str, ElementPlan | None] = {}
        self._checks: list[tuple[str, dict[str, Any], str | None, Any, Any]] | None = None
        # choice group → variant keys allowed by every schema that declares the group
        self.groups: dict[str, set[str]] = {}
        for key, defs in self.keys.items():
            # Only choice groups are made here: every other ElementPlan is made on first use,
            # keyed by the data's own key object, so that later lookups of keys from the same
            # JSON parser (orjson reuses key objects) match by identity, not by comparing text.
            if any(el.get("choices") is not None for el, _ in defs):
                ep = self.element(key)
                if ep is not None and ep.choices is not None:
                    self.groups[key] = ep.choices

    def checks(self) -> list[tuple[str, dict[str, Any], str | None, Any, Any]]:
        """Constraints with their native FHIRPath forms (see fastpath.py), compiled once per plan."""
        if self._checks is None:
            self._checks = [
                (key, c, origin, compile_subset(c["expression"]), guard(c["expression"]))
                for key, (c, origin) in self.constraints.items()
            ]
        return self._checks

    def element(self, key: str) -> ElementPlan | None:
        try:
            return self._elements[key]
        except KeyError:
            defs = self.keys.get(key)
            ep = ElementPlan(key, defs, self.compiler) if defs else None
            if ep is not None and ep.choice_of is None and key not in self.excluded:
                if ep.nested:
                    ep.hot = HOT_NESTED
                elif ep.plain:
                    ep.hot = HOT_PLAIN
                elif ep.prim is not None and ep.slicing is None:
                    ep.hot = HOT_CODED
            # Unknown keys come from the data: remembered only up to a bound, so that a stream of
            # made-up keys cannot grow a long-lived validator without limit.
            if ep is not None or len(self._elements) < len(self.keys) + UNKNOWN_KEYS:
                self._elements[key] = ep
            return ep


class Compiler:
    """Caches: type chains, plans by schema set."""

    def __init__(self, source: Resolver) -> None:
        self.source = source
        self._plans: dict[tuple[int, ...], Plan] = {}
        self._chains: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
        self._types: dict[str, set[str]] = {}
        self._type_plans: dict[str, Plan] = {}

    def plan(self, schemas: list[tuple[dict[str, Any], str | None]]) -> Plan:
        # Keyed first by the list as given (duplicates and all): the same resource type and
        # profiles give the same list, so every resource after the first skips the dedupe.
        given = tuple([id(s) for s, _ in schemas])
        plan = self._plans.get(given)
        if plan is not None:
            return plan
        seen: set[int] = set()
        unique = []
        for s in schemas:
            if id(s[0]) not in seen:
                seen.add(id(s[0]))
                unique.append(s)
        key = tuple(id(s[0]) for s in unique)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = Plan(unique, self)
        self._plans[given] = plan
        return plan

    def type_plan(self, type_name: str) -> Plan | None:
        """The plan of a type's own chain, None when the type is unknown."""
        plan = self._type_plans.get(type_name)
        if plan is None:
            chain = self.chain(type_name)
            if not chain:
                return None
            plan = self._type_plans[type_name] = self.plan(list(chain))
        return plan

    def chain(self, ref: str) -> list[tuple[dict[str, Any], str | None]]:
        """A schema and its `base` chain, most specific first; [] when the first is unknown."""
        found = self._chains.get(ref)
        if found is not None:
            return found
        out: list[tuple[dict[str, Any], str | None]] = []
        seen: set[str] = set()
        current: str | None = ref
        while current and current not in seen:
            seen.add(current)
            schema = self.source.schema(current)
            if schema is None:
                break
            out.append((schema, schema.get("url") or current))
            current = schema.get("base")
        if out or len(self._chains) < UNKNOWN_REFS:  # unknown urls come from the data: bounded
            self._chains[ref] = out
        return out

    def is_type(self, name: str) -> bool:
        """Is `name` a loaded type (or profile)?"""
        return bool(self.chain(name))

    def types_of(self, url: str) -> set[str]:
        """Type names a reference to `url`'s instances may carry: the type and its bases."""
        found = self._types.get(url)
        if found is None:
            found = set()
            chain = self.chain(url)
            if chain and chain[0][0].get("type"):
                found.add(chain[0][0]["type"])
            if not found:
                found.add(url.rsplit("/", 1)[-1])
            self._types[url] = found
        return found

    def profile_element(self, url: str, path: str) -> dict[str, Any] | None:
        """The schema of element `path` (`Composition.section:codeA`) of profile `url`: its
        elements by name, `:name` for a slice; None when it is not there."""
        node = self.source.schema(url)
        for part in path.split(".")[1:]:
            if node is None:
                return None
            name, _, slice_name = part.partition(":")
            elements = node.get("elements")
            node = elements.get(name) if isinstance(elements, dict) else None
            if slice_name and isinstance(node, dict):
                slices = (node.get("slicing") or {}).get("slices") or {}
                entry = slices.get(slice_name)
                node = entry.get("schema") if isinstance(entry, dict) else None
        return node if isinstance(node, dict) and node is not self.source.schema(url) else None

    def element_plan(self) -> Plan:
        """The plan for `_x` companions of primitives: Element (id, extension)."""
        chain = self.chain("Element") or [(_ELEMENT, None)]
        return self.plan(chain)

    def element_at(self, ref: list[str]) -> dict[str, Any] | None:
        node = self.source.schema(ref[0])
        for part in ref[1:]:
            if node is None:
                return None
            node = node.get(part)
        return node
