"""Bundle-level rules, checked once per Bundle before its entries are walked."""

from __future__ import annotations

from typing import Any

from fhirschema.validator.findings import Finding, finding
from fhirschema.validator.references import split_reference

# Bundle types whose entries may go without a fullUrl (R4 §2.36.4: a transaction's or batch's
# new resources have no identity yet; the responses echo them)
_NO_FULL_URL = frozenset(("transaction", "batch", "transaction-response", "batch-response"))
Targets = dict[str, set[str | None]]  # `Type/id` -> the fullUrls of the entries that hold it


class BundleIndex:
    """Where a Bundle's entries are found: by fullUrl (its version dropped) and by `Type/id` —
    built once per Bundle, so that resolving a reference does not scan the entries; and each
    entry's fullUrl read once as a RESTful URL, not once per reference written in the entry."""

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries
        self.by_url: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        self.restful: list[tuple[str, str, str] | None] = []  # each entry's _restful(fullUrl)
        self.unnamed: list[bool] = []  # each entry: no fullUrl (or not an object)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.restful.append(None)
                self.unnamed.append(True)
                continue
            full = entry.get("fullUrl")
            self.restful.append(_restful(full))
            self.unnamed.append(full is None)
            if isinstance(full, str):
                self.by_url.setdefault(full.split("/_history/", 1)[0], i)
            res = entry.get("resource")
            if (
                isinstance(res, dict)
                and isinstance(res.get("resourceType"), str)
                and isinstance(res.get("id"), str)
            ):
                self.by_name.setdefault(f"{res['resourceType']}/{res['id']}", i)

    def resolve(self, ref: str, at: int) -> int | None:
        """The entry a reference written in entry `at` names, by R4 §2.36.4.1: absolute
        references and urns by fullUrl; a relative `Type/id` against the base of the referring
        entry's RESTful fullUrl, from a urn-named entry as `urn:uuid:id`, from an entry without
        fullUrl by type and id."""
        if "/_history/" in ref:
            ref = ref.split("/_history/", 1)[0]
        if ref.startswith("urn:") or "://" in ref:
            return self.by_url.get(ref)
        parts = split_reference(ref)
        if parts is None:
            return None
        base = self.restful[at]
        # From a urn-named entry, `Type/x` names the entry `urn:uuid:x` (as the reference resolves it).
        found = self.by_url.get(f"{base[0]}/{ref}" if base is not None else f"urn:uuid:{parts[2]}")
        if found is None and self.unnamed[at]:
            found = self.by_name.get(f"{parts[1]}/{parts[2]}")
        return found

    def resource(self, index: int) -> dict[str, Any] | None:
        entry = self.entries[index]
        res = entry.get("resource") if isinstance(entry, dict) else None
        return res if isinstance(res, dict) else None


def check_bundle(data: dict[str, Any]) -> tuple[list[Finding], Targets, BundleIndex]:
    """Bundle rules (SPEC §3): fullUrl form, duplicate entries, document/message structure; and
    the Bundle's reference targets and index."""
    out: list[Finding] = []
    entries = data.get("entry")
    if not isinstance(entries, list):
        return out, {}, BundleIndex([])
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
                    # A warning: FHIR lets two servers hold the same Type/id (the reference agrees).
                    out.append(finding("fs1201", f"{name} appears in {len(hits)} entries with different fullUrls",
                                       severity="warning", extra=("entry", i, "resource", "id")))  # fmt: skip
    kind = data.get("type")
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    expected = (
        {"document": "Composition", "message": "MessageHeader"}.get(kind) if isinstance(kind, str) else None
    )
    if expected and (not isinstance(first, dict) or first.get("resourceType") != expected):
        out.append(finding("fs1202", f"a {kind} Bundle must start with a {expected}",
                           extra=("entry", 0, "resource")))  # fmt: skip
    index = BundleIndex(entries)
    out += full_url_findings(index)
    if not (isinstance(kind, str) and kind in _NO_FULL_URL):  # (a malformed `type` may be a list)
        for i, entry in enumerate(entries):
            if (
                isinstance(entry, dict)
                and "resource" in entry
                and "fullUrl" not in entry
                and not _outcome(entry)
            ):
                out.append(finding("fs1203", "an entry of this Bundle needs a fullUrl, the identity of its resource "
                                   "(only transactions and batches may omit it)", extra=("entry", i)))  # fmt: skip
    if kind == "document":
        out += document_findings(entries, index)
    targets: Targets = {}
    for (name, _), hits in by_identity.items():  # every version of a Type/id: one target set
        targets.setdefault(name, set()).update(f for _, f in hits)
    return out, targets, index


def _outcome(entry: dict[str, Any]) -> bool:
    """A search's own OperationOutcome (`search.mode` outcome): a result of the operation that no
    server stores, so it has no identity to give (R4 §2.36.4: "results from operations might
    involve resources that are not identified")."""
    search = entry.get("search")
    return isinstance(search, dict) and search.get("mode") == "outcome"


def _restful(full: Any) -> tuple[str, str, str] | None:
    """`http://base/Patient/1` → (base, Patient, 1); None for urns and other URLs."""
    if not isinstance(full, str):
        return None
    parts = split_reference(full)
    return parts if parts is not None and parts[0] else None


def full_url_findings(index: BundleIndex) -> list[Finding]:
    """A RESTful fullUrl (`base/Type/id`) names its resource: type and id must agree (R4 §2.36.4)."""
    out: list[Finding] = []
    for i, entry in enumerate(index.entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        parts = index.restful[i]
        res = entry["resource"]
        if parts is None or not isinstance(res.get("resourceType"), str):
            continue
        _, rtype, rid = parts
        if "id" not in res:
            out.append(finding("fs1203", f"fullUrl {entry['fullUrl']} looks like a RESTful URL, but the "
                               "resource has no id", extra=("entry", i)))  # fmt: skip
        elif rtype != res["resourceType"] or rid != res.get("id"):
            out.append(finding("fs1203", f"fullUrl {entry['fullUrl']} looks like a RESTful URL, so it must end "
                               f"with the resource's type and id ({res['resourceType']}/{res.get('id')})",
                               extra=("entry", i)))  # fmt: skip
    return out


def _references(
    node: Any, path: tuple[str | int, ...], depth: int, out: list[tuple[str, tuple[str | int, ...]]]
) -> None:
    """Every `reference` string below `node` with its path (bounded: the walk reports deeper data)."""
    if depth > 60:
        return
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref and not ref.startswith("#"):
            out.append((ref, path))
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                _references(value, (*path, key), depth + 1, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, (dict, list)):
                _references(value, (*path, i), depth + 1, out)


# The Composition's references that a document must hold (R4 §3.3.1: subject, author, encounter,
# custodian, attester party, event detail; in every section, nested too, its author, focus and
# entries) — the ones the reference validator resolves inside the Bundle. Other references of
# a document (another entry's, an extension's) may point outside it: no error there.
_COMPOSITION_LINKS = frozenset(("subject", "author", "encounter", "custodian"))
_SECTION_LINKS = frozenset(("author", "focus", "entry"))


def _composition_link(path: tuple[str | int, ...]) -> bool:
    """Is `path` (below the Composition, to the Reference) one of `_COMPOSITION_LINKS`' kind?"""
    keys = [p for p in path if isinstance(p, str)]
    if len(keys) == 1:
        return keys[0] in _COMPOSITION_LINKS
    if keys in (["attester", "party"], ["event", "detail"]):
        return True
    if len(keys) < 2 or keys[0] != "section":
        return False
    *sections, last = keys
    return last in _SECTION_LINKS and all(k == "section" for k in sections)


def document_findings(entries: list[Any], index: BundleIndex) -> list[Finding]:
    """A document's Composition references resolve inside it, and every entry is reachable from
    the Composition by following references forward or backward (R4 §3.3.1)."""
    out: list[Finding] = []
    links: dict[int, set[int]] = {i: set() for i in range(len(entries))}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        found: list[tuple[str, tuple[str | int, ...]]] = []
        _references(entry["resource"], (), 0, found)
        for ref, path in found:
            target = index.resolve(ref, i)
            if target is not None:
                links[i].add(target)
                links[target].add(i)
            elif i == 0 and _composition_link(path) and (ref.startswith("urn:") or "://" not in ref):
                out.append(finding("fs1204", f"{ref} cannot be found in the document Bundle",
                                   extra=("entry", i, "resource", *path, "reference")))  # fmt: skip
    reached = {0}
    todo = [0]
    while todo:
        for j in links[todo.pop()]:
            if j not in reached:
                reached.add(j)
                todo.append(j)
    for i, entry in enumerate(entries):
        if i not in reached and isinstance(entry, dict):
            out.append(finding("fs1205", f"entry {entry.get('fullUrl') or i} is not reachable from the Composition "
                               "by following references", extra=("entry", i)))  # fmt: skip
    return out
