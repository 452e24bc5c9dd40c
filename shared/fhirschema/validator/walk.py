"""The data walk: one `Run` per validated resource, driven by compiled plans."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from fhirschema.validator.bindings import binding_findings
from fhirschema.validator.bundles import BundleIndex, check_bundle
from fhirschema.validator.companions import walk_companion
from fhirschema.validator.constraints import check_constraints, primitive_constraints
from fhirschema.validator.extensions import extension_findings
from fhirschema.validator.findings import Finding
from fhirschema.validator.issues import Issue
from fhirschema.validator.matching import equals, matches
from fhirschema.validator.narrative import constraint_findings, control_findings
from fhirschema.validator.plans import HOT_CODED, HOT_NESTED, HOT_PLAIN, ElementPlan, Plan
from fhirschema.validator.primitives import checker
from fhirschema.validator.references import (
    bundle_entry,
    contained_resource,
    no_profile_matches,
    reference_findings,
)
from fhirschema.validator.slices import absent_slices, assign_slices
from fhirschema.validator.values import absent_value_findings, limit_findings

if TYPE_CHECKING:
    from fhirschema.validator.walkconfig import WalkConfig

MAX_DEPTH: Final = 200  # deeper data is reported, not walked (no RecursionError, bounded work)
# A resource's logical id is an `id` (R4 resource.html, Resource.id; the R4 package types it as a
# System.String): 1-64 letters, digits, '-' and '.' — the reference checks it on every resource.
_RESOURCE_ID: Final = checker("id")
# The bottom of Run.path, never popped: a list popped to empty gives its item array back (CPython
# reallocs it to 0 bytes, through the C allocator) and takes one again on the next append: ~300
# instructions per element at a resource's top level (callgrind). Not a str: element paths skip it.
_BOTTOM: Final = -1
TOP: Final = 1  # where a resource's own path begins in Run.path


class Run:
    def __init__(self, config: WalkConfig, issues: list[Issue]) -> None:
        self.config = config
        self.issues = issues
        self.path: list[str | int] = [_BOTTOM]  # the data's path from the validated resource: where()
        self.depth = 0
        self.too_deep = False
        self.resources: list[dict[str, Any]] = []  # enclosing resources, outermost first
        # %rootResource of each: its container when contained, else itself (a Bundle entry's
        # resource is its own root)
        self.roots: list[dict[str, Any]] = []
        self.starts: list[int] = []  # len(self.path) where each enclosing resource begins
        # The element whose extensions are walked: its type, the element itself, the url of the
        # innermost extension it is in (or None), for the extensions' context rules. These three
        # start with a None that is never popped (see _BOTTOM): none walked.
        self.ext_parents: list[tuple[str | None, Any, str | None] | None] = [None]
        self.ext_urls: list[str | None] = [None]  # urls of the extensions being walked, outermost first
        self.companions: list[str | None] = [None]  # primitive types whose `_x` companion is walked
        self.bundle_targets: dict[str, set[str | None]] = {}
        self.bundle: dict[str, Any] | None = None  # the innermost Bundle walked
        self.bundle_index: BundleIndex | None = None  # its entries by fullUrl and Type/id

    # -- reporting -----------------------------------------------------------------------

    def issue(self, code: str, message: str, *, severity: str = "error", extra: list[str | int] | None = None,
              profile: str | None = None) -> None:  # fmt: skip
        path = self.path[TOP:]
        if extra:
            path.extend(extra)
        self.issues.append(Issue(code, severity, path, message, profile))

    def where(self) -> list[str | int]:
        """The current path in the validated resource (keys and indices)."""
        return self.path[TOP:]

    def report(self, findings: Iterable[Finding]) -> None:
        """A rule module's findings, at the current path."""
        if not findings:
            # The common case, an empty list or tuple: iterating it would build an iterator
            # object (~300 instructions per call, callgrind; thousands of calls per corpus pass).
            return
        for code, severity, message, extra, profile in findings:
            self.issue(code, message, severity=severity, extra=list(extra) or None, profile=profile)

    # -- resources -----------------------------------------------------------------------

    def resource(self, data: Any, profiles: list[str] | tuple[str, ...] = ()) -> None:
        if not isinstance(data, dict):
            self.issue("fs202", f"expected a resource (a JSON object), got {type(data).__name__}")
            return
        rtype = data.get("resourceType")
        meta = data.get("meta")
        plan = None
        if (
            not profiles
            and type(rtype) is str
            and not self.config.anonymous
            and not (type(meta) is dict and "profile" in meta)
        ):
            plan = self.config.compiler.type_plan(rtype)  # the commonest case: the type's own plan
        if plan is None:
            plan, findings = self.config.resource_plan(data, rtype, meta, profiles, not self.resources)
            self.report(findings)
            if plan is None:
                return
        rid = data.get("id")
        if type(rid) is str and _RESOURCE_ID.check(rid) is not None:
            self.issue("fs110", f"invalid resource id {rid[:80]!r}: 1-64 letters, digits, '-' or '.'",
                       extra=["id"])  # fmt: skip
        contained = len(self.path) >= 2 and self.path[-2] == "contained" and bool(self.roots)
        self.roots.append(self.roots[-1] if contained else data)
        self.resources.append(data)
        self.starts.append(len(self.path))
        outer = (self.bundle, self.bundle_targets, self.bundle_index) if rtype == "Bundle" else None
        try:
            if rtype == "Bundle":
                findings, self.bundle_targets, self.bundle_index = check_bundle(data)
                self.bundle = data
                self.report(findings)
            self.node(data, plan)
        finally:
            self.resources.pop()
            self.roots.pop()
            self.starts.pop()
            if outer is not None:  # a Bundle inside an entry: the enclosing one's again
                self.bundle, self.bundle_targets, self.bundle_index = outer

    def conforms(self, data: dict[str, Any], url: str) -> bool:
        """Does `data` validate without errors against profile `url` (a slice's profile)?"""
        chain = self.config.compiler.chain(url)
        if not chain or chain[0][0].get("type") not in (None, data.get("resourceType")):
            return False
        issues: list[Issue] = []
        walk = Run(self.config, issues)
        walk.depth = self.depth  # within the same depth bound: compiled, recursion is C's
        walk.resource(data, (url,))
        return not any(i.severity in ("error", "fatal") for i in issues)

    # -- objects -------------------------------------------------------------------------

    def node(self, data: dict[str, Any], plan: Plan) -> None:
        if self.depth >= MAX_DEPTH:
            self.issue("fs1302", f"nesting deeper than {MAX_DEPTH} levels is not validated", severity="error")
            self.too_deep = True  # and FHIRPath over such data would be unbounded too
            return
        self.depth += 1
        path = self.path
        present_groups: dict[str, list[str]] | None = None
        elements = plan._elements
        for key, value in data.items():
            ep = elements.get(key)
            if ep is not None:
                hot = ep.hot
                # Hot path 1: a complex value with nothing to check but its own children.
                if hot == HOT_NESTED:
                    child = ep._child0 or ep.child()
                    if not ep.type_missing:
                        if not ep.array:
                            if type(value) is dict and value:
                                path.append(key)
                                self.node(value, child)
                                path.pop()
                                continue
                        elif _fits(ep, value) and _all_objects(value):
                            path.append(key)
                            for i, v in enumerate(value):
                                path.append(i)
                                self.node(v, child)
                                path.pop()
                            path.pop()
                            continue
                # Hot path 2: a primitive with nothing but its lexical rule to check.
                elif hot == HOT_PLAIN:
                    if not ep.array:
                        if value is not None and type(value) is not list:
                            code = ep.prim.check(value)  # type: ignore[union-attr]
                            if code is not None:
                                path.append(key)
                                self.bad_primitive(code, ep, value)
                                path.pop()
                            continue
                    elif _fits(ep, value):
                        prim = ep.prim
                        for i, v in enumerate(value):
                            code = prim.check(v) if v is not None else "fs202"  # type: ignore[union-attr]
                            if code is not None:
                                path.append(key)
                                path.append(i)
                                self.bad_primitive(code, ep, v)
                                path.pop()
                                path.pop()
                        continue
                # Hot path 3: a primitive with value rules (a bound code, a fixed value).
                elif hot == HOT_CODED:
                    if not ep.array:
                        if value is not None and type(value) is not list:
                            path.append(key)
                            code = ep.prim.check(value)  # type: ignore[union-attr]
                            if code is not None:
                                self.bad_primitive(code, ep, value)
                            self.value_checks(value, ep)
                            path.pop()
                            continue
                    elif _fits(ep, value):
                        prim = ep.prim
                        path.append(key)
                        for i, v in enumerate(value):
                            path.append(i)
                            code = prim.check(v) if v is not None else "fs202"  # type: ignore[union-attr]
                            if code is not None:
                                self.bad_primitive(code, ep, v)
                            if v is not None:
                                self.value_checks(v, ep)
                            path.pop()
                        path.pop()
                        continue
            if key == "resourceType" and self.resources and data is self.resources[-1]:
                continue
            if key[:1] == "_":
                walk_companion(self, data, key, value, plan)
                companion = plan.element(key[1:])
                limits = companion.limits if companion is not None else None
                if limits is not None and limits.presence_rules() and key[1:] not in data:
                    path.append(key[1:])
                    self.report(absent_value_findings(key[1:], value, limits))
                    path.pop()
                if companion is not None and companion.choice_of is not None and key[1:] not in data:
                    present_groups = _present(present_groups, companion.choice_of, key[1:])
                continue
            if key in plan.excluded:
                path.append(key)
                self.issue("fs207", f"element {key!r} is not allowed here", profile=plan.excluded[key])
                path.pop()
                continue
            if ep is None:  # not met in this plan yet (or unknown): made now; else looked up above
                ep = plan.element(key)
            if ep is None or (ep.choices is not None and ep.type is None):
                path.append(key)
                hint = f" (use one of {', '.join(sorted(ep.choices or ()))})" if ep is not None else ""
                self.issue("fs201", f"unknown element {key!r}{hint}")
                path.pop()
                continue
            if ep.choice_of is not None:
                allowed = plan.groups.get(ep.choice_of)
                if allowed is not None and key not in allowed:
                    path.append(key)
                    self.issue(
                        "fs801",
                        f"{key} is not an allowed type for {ep.choice_of}[x] here ({', '.join(sorted(allowed))})",
                    )
                    path.pop()
                present_groups = _present(present_groups, ep.choice_of, key)
            path.append(key)
            if ep.is_extension:
                parent = plan.type_name
                if parent == "Element" and self.companions[-1] is not None:
                    parent = self.companions[-1]  # `_birthDate`: extensions of a primitive's value
                host_url = self.ext_urls[-1]
                self.ext_parents.append((parent, data, host_url))
                self.value(value, ep)
                self.ext_parents.pop()
            else:
                self.value(value, ep)
            path.pop()
        if present_groups:
            for _group, keys in present_groups.items():
                if len(keys) > 1:
                    self.issue("fs802", f"only one of {', '.join(keys)} may be present")
        # Flags on the plan itself: an empty dict is not touched (each is a likely cache miss).
        if plan.has_required:
            self.missing(data, plan, present_groups)
        if present_groups:
            for key, origin in plan.excluded.items():
                if key in present_groups:
                    self.issue("fs207", f"element {key!r} is not allowed here", extra=[key], profile=origin)
        if self.config.invariants is not None and plan.has_constraints and not self.too_deep:
            start = self.starts[-1] if self.starts else TOP
            root = self.roots[-1] if self.roots else data
            found = check_constraints(
                data,
                plan,
                self.config.invariants,
                self.resources,
                root,
                self.path,
                start,
                self.config.terminology,
            )
            self.report(found)
        self.depth -= 1

    def missing(self, data: dict[str, Any], plan: Plan, present_groups: dict[str, list[str]] | None) -> None:
        """Required elements absent from `data`."""
        for key, origin in plan.required_items:
            if key in data or (present_groups and key in present_groups):
                continue
            if "_" + key in data:
                ep = plan.element(key)
                if ep is not None and ep.binding is not None and ep.binding[0].get("strength") == "required":
                    # An extension (e.g. data-absent-reason) does not satisfy a required binding.
                    self.issue("fs501", f"{key} needs a code from {ep.binding[0]['valueSet']}", extra=[key])
                continue
            self.issue("fs301", f"required element {key!r} is missing", extra=[key], profile=origin)
        for key in plan.sliced:
            # Absent, its required slices are missing too; once, as fs301, when it is itself required.
            ep = plan.element(key)
            absent = key not in data and "_" + key not in data and key not in plan.required
            if absent and ep is not None and ep.slicing is not None:
                self.report(absent_slices(key, ep.slicing))

    def element_path(self) -> str:
        """`Patient.name` for an extension at Patient.name[0].extension[2] (indices dropped)."""
        resource = self.resources[-1] if self.resources else {}
        keys = [
            p.lstrip("_") for p in self.path[self.starts[-1] if self.starts else TOP :] if isinstance(p, str)
        ]
        while keys and keys[-1] in ("extension", "modifierExtension"):
            keys.pop()
        return ".".join([str(resource.get("resourceType", "")), *keys])

    # -- values --------------------------------------------------------------------------

    def bad_primitive(self, code: str, ep: ElementPlan, value: Any) -> None:
        if code == "fs202":
            self.issue(code, "null is only allowed as a placeholder in arrays with a '_' companion")
        else:
            self.issue(code, f"invalid {ep.type}: {str(value)[:80]!r}")

    def value(self, value: Any, ep: ElementPlan) -> None:
        if ep.array:
            if not isinstance(value, list):
                self.issue("fs203", "expected an array")
                items: list[Any] = [value]
            else:
                items = value
                if not items:
                    self.issue("fs303", "arrays must not be empty; omit the element instead")
                    return
            if ep.min and len(items) < ep.min:
                self.issue("fs303", f"at least {ep.min} item(s) required, found {len(items)}")
            if ep.max is not None and len(items) > ep.max:
                self.issue("fs302", f"at most {ep.max} item(s) allowed, found {len(items)}")
            extras = None
            if ep.slicing is not None:
                extras, findings = assign_slices(
                    items, ep, self.conforms, self.config.terminology, self.resolve, self.config.check_code
                )
                self.report(findings)
            path = self.path
            for i, item in enumerate(items):
                path.append(i)
                self.item(item, ep, extras[i] if extras else ())
                path.pop()
        elif isinstance(value, list):
            self.issue("fs203", "expected a single value, got an array")
        else:
            self.item(value, ep, ())

    def item(self, item: Any, ep: ElementPlan, extra: tuple[dict[str, Any], ...]) -> None:
        if item is None:
            self.issue("fs202", "null is only allowed as a placeholder in arrays with a '_' companion")
            return
        if ep.prim is not None:
            code = ep.prim.check(item)
            if code is not None:
                self.bad_primitive(code, ep, item)
        elif ep.is_resource:
            if len(ep.profiles) > 1 and isinstance(item, dict):
                # type.profile lists alternatives: the resource must conform to one of them
                chosen = next((p for p in ep.profiles if self.conforms(item, p)), None)
                if chosen is None:
                    self.report((no_profile_matches(ep.profiles),))
                self.resource(item, (chosen or ep.profiles[0],))
            else:
                self.resource(item, ep.profiles)
            return
        elif ep.type is None and not isinstance(item, dict):
            pass  # an untyped overlay element: nothing to check the value itself against
        else:
            if not isinstance(item, dict):
                self.issue("fs204" if ep.type is None else "fs202", f"expected an object ({ep.type})")
                return
            if not item or (len(item) == 1 and "id" in item):
                # ele-1: an element needs a value or children, and its id is neither
                self.issue("fs202", "empty objects are not allowed: an element needs a value or children")
                return
            if ep.is_extension:
                extra = self.extension_schemas(item, ep, extra)
                if not extra and not self.config.compiler.chain("Extension"):
                    return  # no Extension definition loaded: nothing to check the item against
            if len(ep.profiles) > 1 and not ep.is_extension:
                extra = extra + self.pick_profile(item, ep, extra)
            child = ep.child(extra)
            if ep.type_missing:
                self.issue("fs701", f"type {ep.type} is not loaded", severity=self.config.unknown_severity)
            if ep.is_extension:
                url = item.get("url")
                absolute = isinstance(url, str) and ("://" in url or url.startswith("urn:"))
                self.ext_urls.append(url if absolute else self.ext_urls[-1])
                self.node(item, child)
                self.ext_urls.pop()
            else:
                self.node(item, child)
            if ep.is_reference:
                root = self.roots[-1] if self.roots else None
                target = self.entry_type(item.get("reference")) if self.bundle_index is not None else None
                self.report(reference_findings(item, ep, self.config.is_type, root, self.bundle_targets,
                                               self.config.references, target))  # fmt: skip
        if ep.value_checks:
            self.value_checks(item, ep)

    def value_checks(self, item: Any, ep: ElementPlan) -> None:
        """Fixed value, pattern and binding of `ep` on one of its values."""
        for fixed, origin in ep.fixed:
            if not equals(fixed, item):
                self.issue("fs206", f"value must be exactly {_short(fixed)}", profile=origin)
        for pattern, origin in ep.patterns:
            if not matches(pattern, item):
                self.issue("fs205", f"value must match the pattern {_short(pattern)}", profile=origin)
        if ep.type == "xhtml" and self.config.invariants is not None and isinstance(item, str):
            self.report(constraint_findings(item))
        limits = ep.limits
        if limits is not None:
            self.report(limit_findings(item, limits))
            if limits.narrative_source is not None or limits.narrative_language is not None:
                language = self.resources[-1].get("language") if self.resources else None
                self.report(
                    control_findings(item, limits.narrative_source, limits.narrative_language, language)
                )
        if ep.bound and self.config.terminology is not None:
            self.report(binding_findings(item, ep, self.config.check_code))
        if ep.constraints and self.config.invariants is not None and not self.too_deep:
            resource = self.resources[-1] if self.resources else {}
            root = self.roots[-1] if self.roots else resource
            self.report(primitive_constraints(item, ep.type, ep.constraints, self.config.invariants, resource,
                                              root, self.config.terminology))  # fmt: skip

    def extension_schemas(self, item: dict[str, Any], ep: ElementPlan,
                          extra: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:  # fmt: skip
        """The schemas of extension `item` (its definition's, after the slice's `extra`); the
        findings on its url and where it is used are reported."""
        host_url = self.ext_urls[-1]
        parents = self.ext_parents[-1]
        resource = self.resources[-1] if self.resources else None
        root = self.roots[-1] if self.roots else None
        schemas, findings = extension_findings(
            item.get("url"), ep.key == "modifierExtension", extra, host_url, parents, self.element_path, resource,
            root, self.config,
        )  # fmt: skip
        self.report(findings)
        return extra + schemas

    def pick_profile(self, item: dict[str, Any], ep: ElementPlan,
                     extra: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:  # fmt: skip
        """type.profile lists alternatives: the schemas of the first one `item` conforms to (or of
        the first, reported as matching none)."""
        chains = [tuple(s for s, _ in self.config.compiler.chain(p)) for p in ep.profiles]
        for chain in chains:
            trial = Run(self.config, [])
            trial.depth = self.depth  # within the same depth bound
            trial.resources = list(self.resources)
            trial.roots = list(self.roots)
            trial.starts = [TOP] * len(self.resources)
            trial.node(item, ep.child(extra + chain))
            if not any(i.severity in ("error", "fatal") for i in trial.issues):
                return chain
        self.report((no_profile_matches(ep.profiles),))
        return chains[0]

    def resolve(self, ref: str) -> dict[str, Any] | None:
        """A reference's target among the resources at hand: contained ones, the Bundle's entries."""
        if ref.startswith("#"):
            # An index loop: mypyc (1.x) fails on reversed() over this list.
            for n in range(len(self.resources) - 1, -1, -1):
                found = contained_resource(self.resources[n], ref[1:])
                if found is not None:
                    return found
            return None
        return bundle_entry(self.bundle, ref) if self.bundle is not None else None

    def entry_type(self, ref: Any) -> str | None:
        """The type of the innermost Bundle's entry that `ref`, written in one of its entries,
        resolves to (R4 §2.36.4.1, from that entry's fullUrl); None when it resolves to none."""
        bundle, index = self.bundle, self.bundle_index
        if type(ref) is not str or ref[:1] == "#" or not ref or index is None:
            return None
        for n in range(len(self.resources) - 1, -1, -1):
            if self.resources[n] is bundle:
                s, path = self.starts[n], self.path
                at = path[s + 1] if len(path) > s + 1 and path[s] == "entry" else None
                if not isinstance(at, int):
                    return None  # the Bundle's own reference (its signature), from no entry
                found = index.resolve(ref, at)
                return index.types[found] if found is not None else None
        return None


def _present(groups: dict[str, list[str]] | None, group: str, key: str) -> dict[str, list[str]]:
    """`groups` with `key` added to the variants present of choice `group` (made on first use)."""
    if groups is None:
        return {group: [key]}
    keys = groups.get(group)
    if keys is None:
        groups[group] = [key]
    else:
        keys.append(key)
    return groups


def _fits(ep: ElementPlan, value: Any) -> bool:
    """A non-empty array within the element's cardinality (the hot paths' precondition)."""
    return (
        type(value) is list
        and bool(value)
        and len(value) >= ep.min
        and (ep.max is None or len(value) <= ep.max)
    )


def _all_objects(items: list[Any]) -> bool:
    """Every item a non-empty JSON object (the nested hot path's precondition)."""
    # A loop, not all(<generator>): compiled, this indexes the list; the generator is generic.
    for item in items:  # noqa: SIM110
        if type(item) is not dict or not item:
            return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
