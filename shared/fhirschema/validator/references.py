"""Reference rules: target types, local `#id` references, Bundle targets, an external resolver."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from fhirschema.validator.findings import Finding, Findings, finding

if TYPE_CHECKING:
    from fhirschema.validator.plans import ElementPlan

REFERENCE = re.compile(
    r"^(?:(?P<base>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
_AT_REFERENCE = ("reference",)
MEMO_SIZE = 10_000  # verdicts remembered per element: bounded, a validator lives as long as its process


class ReferenceResolver(Protocol):
    def exists(self, reference: str) -> bool | None: ...  # None: cannot tell


def check_reference(
    ref: str,
    allowed: set[str] | None,
    is_type: Callable[[str], bool],
    root: dict[str, Any] | None,
    bundle_targets: dict[str, set[str | None]],
    resolver: ReferenceResolver | None,
    target_type: str | None = None,
) -> list[Finding]:
    """Findings on `Reference.reference` `ref`: `allowed` target types (None: any), `is_type` tells
    a resource type from an IG's own URL scheme, `root` the outermost resource (its `contained`),
    `target_type` the type of the Bundle entry it resolves to (None: it resolves to none)."""
    out: list[Finding] = []
    if ref.startswith("#"):
        # Resolution against `contained` (ref-1); only judged when there is something contained.
        contained = root.get("contained") if root is not None else None
        ids = (
            {c.get("id") for c in contained if isinstance(c, dict)} if isinstance(contained, list) else set()
        )
        if ref != "#" and contained and ref[1:] not in ids:
            out.append(finding("fs1002", f"{ref} does not name a contained resource", extra=_AT_REFERENCE))
        elif allowed is not None and root is not None and ref != "#":
            # A resolved target is judged by its real type (the reference checks contained targets).
            target = contained_resource(root, ref[1:])
            kind = target.get("resourceType") if target is not None else None
            if isinstance(kind, str) and is_type(kind) and kind not in allowed:
                out.append(_wrong_type(kind, allowed, "error"))
        return out
    m = REFERENCE.match(ref)
    named = m.group("type") if m else None
    # Only judge real resource types: `.../Network/x` (an IG's own URL scheme) says nothing.
    known = m is not None and named is not None and (not m.group("base") or is_type(named))
    exists = resolver.exists(ref) if resolver is not None and not ref.startswith("urn:") else None
    if target_type is not None:
        # Resolved inside the Bundle (R4 §2.36.4.1), the target is judged by its real type, as a
        # contained one is: a `Type/id` naming another type than its target's is wrong, whatever
        # the allowed types (the reference: "Matching reference for reference ... has resourceType").
        if known and named is not None and named != target_type:
            out.append(finding("fs1001", f"{ref} resolves to a {target_type} in the Bundle, not a {named}",
                               extra=_AT_REFERENCE))  # fmt: skip
        elif allowed is not None and is_type(target_type) and target_type not in allowed:
            out.append(_wrong_type(target_type, allowed, "error"))
    elif allowed is not None and known and named is not None and named not in allowed:
        # The reference validator judges a literal reference's type only when the reference
        # resolves (a Bundle entry, a contained or fetched resource); an unresolved one with a type
        # outside the allowed ones is no error there (fhir-test-cases type-ref-unchecked): a warning.
        resolved = exists is True or (m is not None and _in_bundle(ref, m, bundle_targets))
        out.append(_wrong_type(named, allowed, "error" if resolved else "warning"))
    if m and not m.group("base") and len(bundle_targets.get(ref, ())) > 1:
        out.append(finding("fs1004", f"{ref} matches several Bundle entries with different fullUrls",
                           severity="warning", extra=_AT_REFERENCE))  # fmt: skip
    if exists is False:
        out.append(finding("fs1002", f"{ref} cannot be resolved", severity="warning", extra=_AT_REFERENCE))
    return out


def _wrong_type(target_type: str, allowed: set[str], severity: str) -> Finding:
    unresolved = "" if severity == "error" else " (not resolved here, so not an error)"
    return finding(
        "fs1001", f"reference to {target_type} is not allowed here ({', '.join(sorted(allowed))}){unresolved}",
        severity, extra=_AT_REFERENCE,
    )  # fmt: skip


def _in_bundle(ref: str, m: re.Match[str], bundle_targets: dict[str, set[str | None]]) -> bool:
    """Does `ref` name an entry of the Bundle at hand (`Type/id`, or an entry's absolute fullUrl)?"""
    name = f"{m.group('type')}/{m.group('id')}"
    fulls = bundle_targets.get(name)
    if not fulls:
        return False
    return not m.group("base") or ref.split("/_history/", 1)[0] in fulls


def reference_findings(
    item: dict[str, Any],
    ep: ElementPlan,
    is_type: Callable[[str], bool],
    root: dict[str, Any] | None,
    bundle_targets: dict[str, set[str | None]],
    resolver: ReferenceResolver | None,
    target_type: str | None = None,
) -> Findings:
    """Findings on a Reference value of element `ep` (see `check_reference`)."""
    ref = item.get("reference")
    if not isinstance(ref, str):
        return ()
    # A plain reference's verdict depends on the string alone, unless it names several Bundle
    # entries, resolves to one, or a resolver is in play: remembered per element (real data
    # repeats references).
    key: str | None = ref
    if ref[:1] == "#" or resolver is not None or target_type is not None:
        key = None
    elif bundle_targets:
        # Inside a Bundle the verdict also depends on its entries (a resolved target's wrong type
        # is an error, an unresolved one's a warning): a `Type/id` the Bundle holds once is
        # remembered apart; absolute and versioned references are not remembered there.
        targets = bundle_targets.get(ref)
        if targets is not None:
            key = "\x00" + ref if len(targets) <= 1 else None
        elif "://" in ref or "/_history/" in ref:
            key = None
    if key is not None and (verdict := ep.verdicts.get(key)) is not None:
        found: Findings = verdict
        return found
    found = tuple(check_reference(ref, ep.ref_types(), is_type, root, bundle_targets, resolver, target_type))
    if key is not None and len(ep.verdicts) < MEMO_SIZE:
        ep.verdicts[key] = found
    return found


def contained_resource(owner: dict[str, Any], local_id: str) -> dict[str, Any] | None:
    contained = owner.get("contained")
    for c in contained if isinstance(contained, list) else ():
        if isinstance(c, dict) and c.get("id") == local_id:
            return c
    return None


def bundle_entry(bundle: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """The entry resource `ref` names: by fullUrl, or `Type/id` against entries' type and id."""
    entries = bundle.get("entry")
    m = REFERENCE.match(ref)
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        res: dict[str, Any] = entry["resource"]
        if entry.get("fullUrl") == ref:
            return res
        if m is not None and res.get("resourceType") == m.group("type") and res.get("id") == m.group("id"):
            return res
    return None


def no_profile_matches(profiles: list[str]) -> Finding:
    return finding("fs702", f"conforms to none of the profiles it may have: {', '.join(profiles)}")
