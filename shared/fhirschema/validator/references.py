"""Reference rules: target types, local `#id` references, Bundle targets, an external resolver."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from fhirschema.validator.findings import Finding, Findings, finding

if TYPE_CHECKING:
    from fhirschema.validator.plans import ElementPlan

REFERENCE = re.compile(
    r"^(?:(?P<base>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
_AT_REFERENCE = ("reference",)
MEMO_SIZE = 10_000  # verdicts remembered per element: bounded, a validator lives as long as its process


def split_reference(ref: str) -> tuple[str, str, str] | None:
    """(base or "", type, id) of a literal reference as `REFERENCE` reads it; None when it is not
    one. The common forms — `Type/id`, `http(s)://base/Type/id` — are decided by loops over the
    characters (compiled, a few instructions each; the regex's lazy base tried every `/` of a
    fullUrl, thousands of instructions); anything else (`_history`, odd characters) goes to the
    regex, so the answer is always the regex's."""
    j = ref.rfind("/")
    if j < 0:
        return None  # REFERENCE needs a `/`
    k = ref.rfind("/", 0, j)
    if _type_name(ref, k + 1, j) and _id(ref, j + 1, len(ref)):
        if k < 0:
            return "", ref[:j], ref[j + 1 :]
        base = ref[:k]
        if _http_base(base):
            return base, ref[k + 1 : j], ref[j + 1 :]
    m = REFERENCE.match(ref)
    if m is None:
        return None
    return m.group("base") or "", m.group("type"), m.group("id")


def plain_slash(ref: str) -> int:
    """Where the `/` of a plain `Type/id` reference is (REFERENCE without base or version, ASCII
    only); -1 when `ref` is not one — then `split_reference` says what the regex makes of it."""
    j = ref.find("/")
    if j < 0 or ref.find("/", j + 1) >= 0 or not _type_name(ref, 0, j) or not _id(ref, j + 1, len(ref)):
        return -1
    return j


def _type_name(s: str, start: int, end: int) -> bool:
    """Is s[start:end] `[A-Z][A-Za-z]+`? (No slice made: compiled, a loop over the string.)"""
    if end - start < 2 or not 65 <= ord(s[start]) <= 90:
        return False
    for i in range(start + 1, end):
        c = ord(s[i])
        if not (97 <= c <= 122 or 65 <= c <= 90):
            return False
    return True


def _id(s: str, start: int, end: int) -> bool:
    """Is s[start:end] `[A-Za-z0-9\\-.]{1,64}`?"""
    if not 0 < end - start <= 64:
        return False
    for i in range(start, end):
        c = ord(s[i])
        if not (97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c == 45 or c == 46):
            return False
    return True


def _http_base(s: str) -> bool:
    """Is `s` `https?://\\S+`, with printable characters? (Unprintable ones: left to the regex.)"""
    if s.startswith("https://"):
        start = 8
    elif s.startswith("http://"):
        start = 7
    else:
        return False
    # Printable and no space: no whitespace (every other whitespace character is unprintable).
    return len(s) > start and " " not in s and _isprintable(s)


_isprintable: Final = str.isprintable


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
    parts = split_reference(ref)
    named = parts[1] if parts is not None else None
    # Only judge real resource types: `.../Network/x` (an IG's own URL scheme) says nothing.
    known = parts is not None and named is not None and (not parts[0] or is_type(named))
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
        resolved = exists is True or (parts is not None and _in_bundle(ref, parts, bundle_targets))
        out.append(_wrong_type(named, allowed, "error" if resolved else "warning"))
    if parts is not None and not parts[0] and len(bundle_targets.get(ref, ())) > 1:
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


def _in_bundle(ref: str, parts: tuple[str, str, str], bundle_targets: dict[str, set[str | None]]) -> bool:
    """Does `ref` name an entry of the Bundle at hand (`Type/id`, or an entry's absolute fullUrl)?"""
    base, rtype, rid = parts
    fulls = bundle_targets.get(f"{rtype}/{rid}")
    if not fulls:
        return False
    return not base or ref.split("/_history/", 1)[0] in fulls


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
    # repeats references). The keys of the other kinds start with \x00 or \x01, which no
    # remembered reference does (`ref < "\x02"`: empty, or starting with one of them).
    key: str | None = ref
    if ref[:1] == "#" or resolver is not None or ref < "\x02":
        key = None
    elif target_type is not None:
        # Resolved to a Bundle entry, the verdict depends on the string and the target's type —
        # and on whether the Bundle holds that `Type/id` more than once (not remembered then).
        # A Bundle's entries referring to the same few resources repeat such references.
        targets = bundle_targets.get(ref)
        key = f"\x01{target_type}\x00{ref}" if targets is None or len(targets) <= 1 else None
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
    parts = split_reference(ref)
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        res: dict[str, Any] = entry["resource"]
        if entry.get("fullUrl") == ref:
            return res
        if parts is not None and res.get("resourceType") == parts[1] and res.get("id") == parts[2]:
            return res
    return None


def no_profile_matches(profiles: list[str]) -> Finding:
    return finding("fs702", f"conforms to none of the profiles it may have: {', '.join(profiles)}")
