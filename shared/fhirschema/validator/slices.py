"""Slicing: the merged slicing of an element (built with its plan), and assigning items to slices
as data is walked (slice cardinality, order, closed and openAtEnd rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhirschema.slicing import build_match
from fhirschema.validator.findings import Finding, finding
from fhirschema.validator.matching import matches
from fhirschema.validator.references import REFERENCE

if TYPE_CHECKING:
    from fhirschema.validator.plans import ElementPlan
    from fhirschema.validator.walkconfig import CodeLookup as CheckCode


class Slice:
    __slots__ = ("match", "max", "min", "name", "origins", "schemas")

    def __init__(self, name: str) -> None:
        self.name = name
        self.match: Any = None
        self.min = 0
        self.max: int | None = None
        self.schemas: list[dict[str, Any]] = []
        self.origins: set[str | None] = set()  # the profiles that declare it


class Slicing:
    __slots__ = ("closed", "discriminators", "open_at_end", "ordered", "slices")

    def __init__(self) -> None:
        self.slices: dict[str, Slice] = {}
        self.closed = False
        self.open_at_end = False
        self.ordered = False
        self.discriminators: list[dict[str, Any]] = []

    def add(self, block: dict[str, Any], origin: str | None = None) -> None:
        rules = block.get("rules")
        if rules == "closed":
            self.closed = True
        elif rules == "openAtEnd":
            self.open_at_end = True
        self.ordered = self.ordered or bool(block.get("ordered"))
        if block.get("discriminator") and not self.discriminators:
            self.discriminators = block["discriminator"]
        for name, entry in (block.get("slices") or {}).items():
            sl = self.slices.get(name)
            if sl is None:
                sl = self.slices[name] = Slice(name)
            sl.origins.add(origin)
            match = entry.get("match")
            if match not in (None, {}) and sl.match in (None, {}):
                sl.match = match
            sl.min = max(sl.min, entry.get("min") or 0)
            if entry.get("max") is not None:
                sl.max = entry["max"] if sl.max is None else min(sl.max, entry["max"])
            if entry.get("schema"):
                sl.schemas.append(entry["schema"])

    def finish(self, key: str) -> None:
        """Give every slice a match: a profile may restate slices without their discriminator."""
        for sl in self.slices.values():
            if sl.match not in (None, {}) or not sl.schemas:
                continue
            schema = sl.schemas[0]
            match = {}
            for candidate in sl.schemas if self.discriminators else ():
                # the first schema that fixes the discriminators (a slice restated by a profile
                # element: the library's slice has them)
                match = build_match(self.discriminators, candidate)
                if match:
                    break
            if not match and key in ("extension", "modifierExtension"):
                match = build_match([{"type": "value", "path": "url"}], schema)
            binding = schema.get("binding") or {}
            if not match and binding.get("strength") == "required" and binding.get("valueSet"):
                match = {"$valueset": binding["valueSet"]}  # slices told apart by their value sets
            if not match:  # no discriminator anywhere: use what the slice fixes about its items
                guess = [{"type": "pattern", "path": "$this"}]
                guess += [{"type": "pattern", "path": k} for k, el in (schema.get("elements") or {}).items()
                          if "fixed" in el or "pattern" in el]  # fmt: skip
                match = build_match(guess, schema)
            sl.match = match or None


Conforms = Callable[[dict[str, Any], str], bool]  # does a resource validate clean against a profile?
Resolve = Callable[[str], dict[str, Any] | None]  # a reference's target among what the walk holds


def assign_slices(
    items: list[Any], ep: ElementPlan, conforms: Conforms, terminology: Any, resolve: Resolve,
    check_code: CheckCode,
) -> tuple[list[tuple[dict[str, Any], ...]], list[Finding]]:  # fmt: skip
    """Classify items into slices: the extra schemas of each item's slice, and the findings on
    slice cardinality, order and closed slicing. `check_code` is `terminology.check` remembered
    (the Validator's)."""
    slicing = ep.slicing
    assert slicing is not None
    named = [s for s in slicing.slices.values() if s.name != "@default"]
    default = slicing.slices.get("@default")
    assigned: list[Any] = []
    counts = dict.fromkeys(slicing.slices, 0)
    extras: list[tuple[dict[str, Any], ...]] = []
    out: list[Finding] = []
    memo: dict[tuple[int, str], bool] = {}

    def check(op: str, data: Any, want: Any) -> bool:
        if op == "$valueset":
            return _in_value_set(terminology, check_code, data, want)
        if op == "$resolve":
            return _target_check(data, want, resolve, memo, conforms)
        return _profile_check(data, want, memo, conforms)

    for i, item in enumerate(items):
        # Every slice the item matches: slices of different profiles (a derived profile naming
        # the base's slice anew) may both hold it, each profile counting its own.
        hits: list[Slice] = []
        for sl in named:
            if sl.match in (None, {}) or not matches(sl.match, item, check):
                continue
            clash = next((h for h in hits if h.origins & sl.origins), None)
            if clash is None:
                hits.append(sl)
            elif sl.name.startswith(clash.name + "/"):
                hits[hits.index(clash)] = sl  # a reslice of the slice matched: the more specific one
            elif not (terminology is None and ("$valueset" in sl.match or "$valueset" in clash.match)):
                # without terminology, value-set sliced items cannot be told apart: no verdict
                out.append(finding("fs901", f"item matches both slice {clash.name!r} and {sl.name!r}",
                                   extra=(i,)))  # fmt: skip
                break
        if not hits and ep.key in ("extension", "modifierExtension") and isinstance(item, dict):
            hits = [s for s in named if s.match in (None, {}) and _ext_url(s) == item.get("url")][:1]
        if not hits and default is not None:
            hits = [default]
        assigned.append(hits[0] if hits else None)
        counted: set[str] = set()
        schemas: list[dict[str, Any]] = []
        for matched in hits:  # not `hit`: compiled, a name keeps one type, and `hit` below may be None
            counted.add(matched.name)
            if "/" in matched.name and matched.name.split("/", 1)[0] in counts:
                counted.add(matched.name.split("/", 1)[0])
            schemas += matched.schemas
        for name in counted:
            counts[name] += 1
        extras.append(tuple(schemas))
    order = {name: i for i, name in enumerate(slicing.slices)}
    last = -1
    seen_unmatched = False
    for i, hit in enumerate(assigned):
        if hit is None:
            seen_unmatched = True
            if slicing.closed:
                out.append(finding("fs901", "item matches no slice and the slicing is closed", extra=(i,)))
            continue
        if slicing.open_at_end and seen_unmatched:
            out.append(finding("fs904", f"item of slice {hit.name!r} after an unsliced item (openAtEnd)",
                               extra=(i,)))  # fmt: skip
        if slicing.ordered:
            if order[hit.name] < last:
                out.append(finding("fs903", f"slice {hit.name!r} is out of order", extra=(i,)))
            last = max(last, order[hit.name])
    for sl in slicing.slices.values():
        n = counts[sl.name]
        if n < sl.min:
            out.append(finding("fs902", f"slice {sl.name!r} needs at least {sl.min} item(s), found {n}"))
        if sl.max is not None and n > sl.max:
            out.append(finding("fs902", f"slice {sl.name!r} allows at most {sl.max} item(s), found {n}"))
    return extras, out


def absent_slices(key: str, slicing: Slicing) -> list[Finding]:
    """`key` is absent: every slice that needs items is missing (a reslice counts within its slice)."""
    return [
        finding("fs902", f"slice {sl.name!r} needs at least {sl.min} item(s), found 0", extra=(key,))
        for sl in slicing.slices.values()
        if sl.min > 0 and "/" not in sl.name
    ]


def _in_value_set(terminology: Any, check_code: CheckCode, data: Any, value_set: str) -> bool:
    if terminology is None:
        return True  # cannot tell: do not split slices on it
    if isinstance(data, str):
        codes: list[tuple[Any, Any]] = [(None, data)]
    elif isinstance(data, dict):
        codings = data.get("coding") if "coding" in data else [data]
        codes = [(c.get("system"), c.get("code")) for c in codings or () if isinstance(c, dict)]
    else:
        return False
    for system, code in codes:
        if not isinstance(code, str):
            continue
        # The verdicts the bindings remembered (keyed by strings: any other system asks directly)
        verdict = (
            check_code(value_set, system, code, None)
            if system is None or isinstance(system, str)
            else terminology.check(value_set, system, code)
        )
        if verdict.status != "not-member":
            return True
    return False


def _target_check(data: Any, want: dict[str, Any], resolve: Resolve, memo: dict[tuple[int, str], bool],
                  conforms: Conforms) -> bool:  # fmt: skip
    """A Reference whose target has one of `want["type"]`s, or conforms to one of `want["profile"]`s."""
    ref = data.get("reference") if isinstance(data, dict) else None
    if not isinstance(ref, str):
        return False
    target = resolve(ref)
    if "type" in want:
        if target is not None:
            return target.get("resourceType") in want["type"]
        m = REFERENCE.match(ref)  # not at hand: the literal reference names the type
        return m is not None and m.group("type") in want["type"]
    return target is not None and _profile_check(target, want.get("profile") or [], memo, conforms)


def _profile_check(
    data: Any, profiles: list[str], memo: dict[tuple[int, str], bool], conforms: Conforms
) -> bool:
    """Does `data` conform to one of `profiles`? Declared in meta.profile, or validates clean."""
    if not isinstance(data, dict):
        return False
    meta = data.get("meta")
    declared = meta.get("profile") if isinstance(meta, dict) else None
    if not isinstance(declared, list):
        declared = []
    for url in profiles:
        if url in declared:
            return True
        key = (id(data), url)
        if key not in memo:
            memo[key] = conforms(data, url)
        if memo[key]:
            return True
    return False


def _ext_url(sl: Any) -> str | None:
    for schema in sl.schemas:
        if schema.get("url"):
            return schema["url"]
    return None
