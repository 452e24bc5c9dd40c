"""Bundle-level rules, checked once per Bundle before its entries are walked."""

from __future__ import annotations

from typing import Any

from fhirschema.validator.findings import Finding, finding
from fhirschema.validator.references import plain_slash, split_reference

# Bundle types whose entries may go without a fullUrl (R4 §2.36.4: a transaction's or batch's
# new resources have no identity yet; the responses echo them)
_NO_FULL_URL = frozenset(("transaction", "batch", "transaction-response", "batch-response"))
Targets = dict[str, set[str | None]]  # `Type/id` -> the fullUrls of the entries that hold it


class BundleIndex:
    """A Bundle's entries read once: where they are found, by fullUrl (its version dropped) and
    by `Type/id`, and what each holds — so that resolving a reference neither scans the entries
    nor re-reads the referring entry's fullUrl, and the Bundle rules read each entry once."""

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries
        self.by_url: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        # Per entry (None where the entry is no object or lacks the part):
        self.full_urls: list[str | None] = []  # fullUrl, when a string
        self.restful: list[tuple[str, str, str] | None] = []  # _restful(fullUrl)
        self.bases: list[str | None] = []  # the RESTful fullUrl's base + "/"
        self.unnamed: list[bool] = []  # no fullUrl at all (relative references: by type and id)
        self.resources: list[dict[str, Any] | None] = []  # entry.resource, when an object
        self.types: list[str | None] = []  # its resourceType, when a string
        self.names: list[str | None] = []  # its `Type/id`, when both are strings
        self.repeated = False  # some `Type/id` in more than one entry
        for i, entry in enumerate(entries):
            full = entry.get("fullUrl") if isinstance(entry, dict) else None
            res = entry.get("resource") if isinstance(entry, dict) else None
            url = full if isinstance(full, str) else None
            parts = _restful(url)
            resource = res if isinstance(res, dict) else None
            kind = resource.get("resourceType") if resource is not None else None
            rtype = kind if isinstance(kind, str) else None
            rid = resource.get("id") if resource is not None else None
            name = f"{rtype}/{rid}" if rtype is not None and isinstance(rid, str) else None
            self.full_urls.append(url)
            self.restful.append(parts)
            self.bases.append(parts[0] + "/" if parts is not None else None)
            self.unnamed.append(full is None)
            self.resources.append(resource)
            self.types.append(rtype)
            self.names.append(name)
            if url is not None:
                self.by_url.setdefault(url.split("/_history/", 1)[0] if "/_history/" in url else url, i)
            if name is not None:
                if name in self.by_name:
                    self.repeated = True
                else:
                    self.by_name[name] = i

    def resolve(self, ref: str, at: int) -> int | None:
        """The entry a reference written in entry `at` names, by R4 §2.36.4.1: absolute
        references and urns by fullUrl; a relative `Type/id` against the base of the referring
        entry's RESTful fullUrl, from a urn-named entry as `urn:uuid:id`, from an entry without
        fullUrl by type and id."""
        if "/_history/" in ref:
            ref = ref.split("/_history/", 1)[0]
        if ref.startswith("urn:") or "://" in ref:
            return self.by_url.get(ref)
        j = plain_slash(ref)
        if j >= 0:
            name, rid = ref, ref[j + 1 :]
        else:
            parts = split_reference(ref)  # what the regex makes of the rest
            if parts is None:
                return None
            name, rid = f"{parts[1]}/{parts[2]}", parts[2]
        base = self.bases[at]
        # From a urn-named entry, `Type/x` names the entry `urn:uuid:x` (as the reference resolves it).
        found = self.by_url.get(base + ref if base is not None else "urn:uuid:" + rid)
        if found is None and self.unnamed[at]:
            found = self.by_name.get(name)
        return found


def check_bundle(data: dict[str, Any]) -> tuple[list[Finding], Targets, BundleIndex]:
    """Bundle rules (SPEC §3): fullUrl form, duplicate entries, document/message structure; and
    the Bundle's reference targets and index."""
    entries = data.get("entry")
    if not isinstance(entries, list):
        return [], {}, BundleIndex([])
    index = BundleIndex(entries)
    kind = data.get("type")
    # (isinstance first: a malformed `type` may be a list)
    needs_full_url = not (isinstance(kind, str) and kind in _NO_FULL_URL)
    out: list[Finding] = []
    restful: list[Finding] = []  # reported after the Bundle-wide findings, as they always were
    missing: list[Finding] = []
    by_identity: dict[tuple[str, str], list[tuple[int, str | None]]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        full = index.full_urls[i]
        if full is not None and not (full.startswith(("urn:uuid:", "urn:oid:")) or "://" in full):
            out.append(finding("fs1003", f"fullUrl {full!r} is neither absolute nor a urn",
                               extra=("entry", i, "fullUrl")))  # fmt: skip
        res = index.resources[i]
        name = index.names[i]
        if res is not None and name is not None and index.repeated:  # (else: one entry per identity)
            meta = res.get("meta")
            version = meta.get("versionId") if isinstance(meta, dict) else None
            by_identity.setdefault((name, str(version)), []).append((i, full))
        if index.restful[i] is not None:
            wrong = _full_url_finding(index, i)
            if wrong is not None:
                restful.append(wrong)
        if needs_full_url and "resource" in entry and "fullUrl" not in entry and not _outcome(entry):
            missing.append(finding("fs1203", "an entry of this Bundle needs a fullUrl, the identity of its resource "
                                   "(only transactions and batches may omit it)", extra=("entry", i)))  # fmt: skip
    if kind != "history":
        for (name, _), hits in by_identity.items():
            if len({full for _, full in hits}) > 1:
                for i, _full in hits:
                    # A warning: FHIR lets two servers hold the same Type/id (the reference agrees).
                    out.append(finding("fs1201", f"{name} appears in {len(hits)} entries with different fullUrls",
                                       severity="warning", extra=("entry", i, "resource", "id")))  # fmt: skip
    first = index.resources[0] if entries else None
    expected = (
        {"document": "Composition", "message": "MessageHeader"}.get(kind) if isinstance(kind, str) else None
    )
    if expected and (first is None or first.get("resourceType") != expected):
        out.append(finding("fs1202", f"a {kind} Bundle must start with a {expected}",
                           extra=("entry", 0, "resource")))  # fmt: skip
    out += restful
    out += missing
    if kind == "document":
        out += document_findings(entries, index)
    targets: Targets = {}
    if not index.repeated:
        for name, i in index.by_name.items():
            targets[name] = {index.full_urls[i]}
    for (name, _), hits in by_identity.items():  # every version of a Type/id: one target set
        targets.setdefault(name, set()).update(f for _, f in hits)
    return out, targets, index


def _outcome(entry: dict[str, Any]) -> bool:
    """A search's own OperationOutcome (`search.mode` outcome): a result of the operation that no
    server stores, so it has no identity to give (R4 §2.36.4: "results from operations might
    involve resources that are not identified")."""
    search = entry.get("search")
    return isinstance(search, dict) and search.get("mode") == "outcome"


def _restful(full: str | None) -> tuple[str, str, str] | None:
    """`http://base/Patient/1` → (base, Patient, 1); None for urns and other URLs."""
    if full is None or not full.startswith("http"):
        return None  # a RESTful URL has an http(s) base
    parts = split_reference(full)
    return parts if parts is not None and parts[0] else None


def _full_url_finding(index: BundleIndex, i: int) -> Finding | None:
    """A RESTful fullUrl (`base/Type/id`) names its resource: type and id must agree (R4 §2.36.4)."""
    parts, res, rtype = index.restful[i], index.resources[i], index.types[i]
    if parts is None or res is None or rtype is None:
        return None
    full = index.full_urls[i]
    if "id" not in res:
        return finding("fs1203", f"fullUrl {full} looks like a RESTful URL, but the resource has no id",
                       extra=("entry", i))  # fmt: skip
    if parts[1] != rtype or parts[2] != res.get("id"):
        return finding("fs1203", f"fullUrl {full} looks like a RESTful URL, so it must end with the "
                       f"resource's type and id ({rtype}/{res.get('id')})", extra=("entry", i))  # fmt: skip
    return None


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
