"""Bundle-level rules, checked once per Bundle before its entries are walked."""

from __future__ import annotations

from typing import Any

from fhirschema.validator.findings import Finding, finding

Targets = dict[str, set[str | None]]  # `Type/id` -> the fullUrls of the entries that hold it


def check_bundle(data: dict[str, Any]) -> tuple[list[Finding], Targets]:
    """Bundle rules (SPEC §3): fullUrl form, duplicate entries, document/message structure; and
    the Bundle's reference targets."""
    out: list[Finding] = []
    entries = data.get("entry")
    if not isinstance(entries, list):
        return out, {}
    by_identity: dict[tuple[str, str], list[tuple[int, str | None]]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        full = entry.get("fullUrl")
        res = entry.get("resource")
        if isinstance(full, str) and not (full.startswith(("urn:uuid:", "urn:oid:")) or "://" in full):
            out.append(finding("fs1003", f"fullUrl {full!r} is neither absolute nor a urn",
                               extra=("entry", i, "fullUrl")))  # fmt: skip
        if (
            isinstance(res, dict)
            and isinstance(res.get("id"), str)
            and isinstance(res.get("resourceType"), str)
        ):
            version = (res.get("meta") or {}).get("versionId") if isinstance(res.get("meta"), dict) else None
            ident = (f"{res['resourceType']}/{res['id']}", str(version))
            by_identity.setdefault(ident, []).append((i, full if isinstance(full, str) else None))
    if data.get("type") != "history":
        for (name, _), hits in by_identity.items():
            if len({full for _, full in hits}) > 1:
                for i, _full in hits:
                    out.append(finding("fs1201", f"{name} appears in {len(hits)} entries with different fullUrls",
                                       extra=("entry", i, "resource", "id")))  # fmt: skip
    kind = data.get("type")
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    expected = (
        {"document": "Composition", "message": "MessageHeader"}.get(kind) if isinstance(kind, str) else None
    )
    if expected and (not isinstance(first, dict) or first.get("resourceType") != expected):
        out.append(finding("fs1202", f"a {kind} Bundle must start with a {expected}",
                           extra=("entry", 0, "resource")))  # fmt: skip
    targets: Targets = {}
    for (name, _), hits in by_identity.items():  # every version of a Type/id: one target set
        targets.setdefault(name, set()).update(f for _, f in hits)
    return out, targets
