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
) -> list[Finding]:
    """Findings on `Reference.reference` `ref`: `allowed` target types (None: any), `is_type` tells
    a resource type from an IG's own URL scheme, `root` the outermost resource (its `contained`)."""
    out: list[Finding] = []
    if ref.startswith("#"):
        # Resolution against `contained` (ref-1); only judged when there is something contained.
        contained = root.get("contained") if root is not None else None
        ids = (
            {c.get("id") for c in contained if isinstance(c, dict)} if isinstance(contained, list) else set()
        )
        if ref != "#" and contained and ref[1:] not in ids:
            out.append(finding("fs1002", f"{ref} does not name a contained resource", extra=_AT_REFERENCE))
        return out
    m = REFERENCE.match(ref)
    target_type = m.group("type") if m else None
    # Only judge real resource types: `.../Network/x` (an IG's own URL scheme) says nothing.
    known = m is not None and target_type is not None and (not m.group("base") or is_type(target_type))
    if allowed is not None and known and target_type not in allowed:
        out.append(finding(
            "fs1001", f"reference to {target_type} is not allowed here ({', '.join(sorted(allowed))})",
            extra=_AT_REFERENCE,
        ))  # fmt: skip
    if m and not m.group("base") and len(bundle_targets.get(ref, ())) > 1:
        out.append(finding("fs1004", f"{ref} matches several Bundle entries with different fullUrls",
                           severity="warning", extra=_AT_REFERENCE))  # fmt: skip
    if resolver is not None and not ref.startswith("urn:") and resolver.exists(ref) is False:
        out.append(finding("fs1002", f"{ref} cannot be resolved", severity="warning", extra=_AT_REFERENCE))
    return out


def reference_findings(
    item: dict[str, Any],
    ep: ElementPlan,
    is_type: Callable[[str], bool],
    root: dict[str, Any] | None,
    bundle_targets: dict[str, set[str | None]],
    resolver: ReferenceResolver | None,
) -> Findings:
    """Findings on a Reference value of element `ep` (see `check_reference`)."""
    ref = item.get("reference")
    if not isinstance(ref, str):
        return ()
    # A plain reference's verdict depends on the string alone, unless it names several Bundle
    # entries or a resolver is in play: remembered per element (real data repeats references).
    memo = (
        ref[:1] != "#" and resolver is None and (not bundle_targets or len(bundle_targets.get(ref, ())) <= 1)
    )
    if memo and (verdict := ep.verdicts.get(ref)) is not None:
        found: Findings = verdict
        return found
    found = tuple(check_reference(ref, ep.ref_types(), is_type, root, bundle_targets, resolver))
    if memo and len(ep.verdicts) < MEMO_SIZE:
        ep.verdicts[ref] = found
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
