"""FHIR packages: read a `.tgz` or an unpacked folder, index its resources, parse them lazily.

A package is indexed from `package/.index.json` when it has one (index-version 0, 1 and 2 all
occur in published packages) and by scanning the JSON files when it has none. Resource bodies
stay as raw bytes until first use: loading R4 core must not parse 4,581 resources up front.
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# Only the package root and the example folder hold resources; `other/`, `openapi/`, `xml/`
# and `.index.db` are publisher by-products.
_INDEXED_DIRS = ("", "example/", "examples/")
_INDEX_KEYS = ("resourceType", "id", "url", "version", "kind", "type", "derivation")


class PackageError(Exception):
    """A package (or one of its files) cannot be read; the message names both."""

    def __init__(self, package: str, message: str, file: str | None = None) -> None:
        self.package = package
        self.file = file
        where = f"{package}: {file}" if file else package
        super().__init__(f"{where}: {message}")


@dataclass(slots=True)
class Entry:
    """One resource of a package, as the index describes it (no body parsed)."""

    filename: str
    resourceType: str
    id: str | None = None
    url: str | None = None
    version: str | None = None
    kind: str | None = None
    type: str | None = None
    derivation: str | None = None


@dataclass
class Package:
    name: str
    version: str
    manifest: dict[str, Any]
    entries: list[Entry]
    source: str
    warnings: list[str] = field(default_factory=list)
    _raw: dict[str, bytes] = field(default_factory=dict, repr=False)
    _root: Path | None = field(default=None, repr=False)
    _parsed: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def id(self) -> str:
        return f"{self.name}#{self.version}"

    @property
    def dependencies(self) -> dict[str, str]:
        """Dependencies as name → version, npm aliases (`"v610@npm:hl7.fhir.us.core"`) resolved."""
        return parse_dependencies(self.manifest.get("dependencies") or {})

    def read(self, entry: Entry | str) -> dict[str, Any]:
        """The parsed resource body; parsed once, then cached."""
        filename = entry if isinstance(entry, str) else entry.filename
        cached = self._parsed.get(filename)
        if cached is not None:
            return cached
        with self._lock:  # validators run in threads: parse each file once, never lose its bytes
            cached = self._parsed.get(filename)
            if cached is not None:
                return cached
            return self._parse(filename)

    def _parse(self, filename: str) -> dict[str, Any]:
        data = self._raw.get(filename)
        if data is None:
            if self._root is None:
                raise PackageError(self.id, "no such file in the package", filename)
            try:
                data = (self._root / filename).read_bytes()
            except OSError as exc:
                raise PackageError(self.id, f"cannot read: {exc.strerror}", filename) from exc
        try:
            resource = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PackageError(self.id, f"not valid JSON ({exc})", filename) from exc
        if not isinstance(resource, dict):
            raise PackageError(self.id, "not a JSON object", filename)
        self._parsed[filename] = resource
        self._raw.pop(filename, None)  # the parsed copy replaces the bytes
        return resource

    def resources(self, resource_type: str | None = None) -> Iterator[dict[str, Any]]:
        """Parsed resources, optionally of one type; unreadable files are skipped with a warning."""
        for entry in self.entries:
            if resource_type and entry.resourceType != resource_type:
                continue
            try:
                yield self.read(entry)
            except PackageError as exc:
                self.warnings.append(str(exc))


def parse_dependencies(raw: dict[str, Any]) -> dict[str, str]:
    return dict(dependency_list(raw))


def dependency_list(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """`package.json` dependencies as (name, version) pairs, npm aliases resolved and kept apart:
    `{"hl7.fhir.us.core": "7.0.0", "v610@npm:hl7.fhir.us.core": "6.1.0"}` names two packages."""
    deps: list[tuple[str, str]] = []
    for key, value in raw.items():
        version = str(value)
        name = key
        if version.startswith("npm:"):  # "alias": "npm:name@version"
            name, _, version = version[4:].rpartition("@")
        elif "@npm:" in key:  # "alias@npm:name": "version"
            name = key.split("@npm:", 1)[1]
        deps.append((name, version))
    return deps


def load_tgz(path: str | Path, data: bytes | None = None) -> Package:
    """Load a package tarball (from disk, or from bytes already downloaded)."""
    label = str(path)
    raw: dict[str, bytes] = {}
    index: bytes | None = None
    manifest: bytes | None = None
    try:
        fileobj = io.BytesIO(data) if data is not None else None
        with tarfile.open(name=None if fileobj else path, fileobj=fileobj, mode="r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                rel = _package_relative(member.name)
                if rel is None:
                    continue
                if rel == "package.json":
                    manifest = _extract(tar, member, label)
                elif rel == ".index.json":
                    index = _extract(tar, member, label)
                elif _is_indexable(rel):
                    raw[rel] = _extract(tar, member, label)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise PackageError(label, f"not a readable package tarball ({exc}); re-download it") from exc
    return _assemble(label, manifest, index, raw, root=None)


def load_files(label: str, files: dict[str, bytes]) -> Package:
    """A package from its files, already read (paths relative to `package/`): for callers that
    unpacked the tarball themselves, e.g. to check it first."""
    raw = {rel: data for rel, data in files.items() if _is_indexable(rel)}
    return _assemble(label, files.get("package.json"), files.get(".index.json"), raw, root=None)


def load_directory(path: str | Path) -> Package:
    """Load an unpacked package: a folder holding `package/` or the `package/` folder itself."""
    root = Path(path)
    if (root / "package").is_dir():
        root = root / "package"
    if not root.is_dir():
        raise PackageError(str(path), "no such package folder")
    label = str(path)
    manifest = _read_optional(root / "package.json")
    index = _read_optional(root / ".index.json")
    names: dict[str, bytes] = {}
    for sub in _INDEXED_DIRS:
        folder = root / sub if sub else root
        # With an index the root files are read lazily from disk; examples are never indexed.
        if folder.is_dir() and (sub or index is None):
            for file in sorted(folder.glob("*.json")):
                rel = f"{sub}{file.name}"
                if _is_indexable(rel):
                    names[rel] = file.read_bytes()
    return _assemble(label, manifest, index, names, root=root)


def load_package(spec: str | Path, cache: Any = None) -> Package:
    """Load from a `.tgz` path, an unpacked folder, or `name#version` / `name@version` in the cache."""
    path = Path(spec)
    if path.is_file():
        return load_tgz(path)
    if path.is_dir():
        return load_directory(path)
    text = str(spec)
    if text.endswith((".tgz", ".tar.gz")) or "/" in text:
        raise PackageError(text, "no such file or folder")
    from fhirschema.cache import PackageCache  # the cache imports this module

    return (cache or PackageCache()).load(text)


def _package_relative(member: str) -> str | None:
    parts = member.split("/", 1)
    if len(parts) != 2 or parts[0] != "package":
        return None
    return parts[1]


def _is_indexable(rel: str) -> bool:
    if not rel.endswith(".json") or rel.rsplit("/", 1)[-1].startswith("."):
        return False
    folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
    return folder in _INDEXED_DIRS and rel not in ("package.json", "ig-r4.json")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise PackageError(label, "unreadable entry", member.name)
    return handle.read()


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')


def _assemble(
    label: str,
    manifest_bytes: bytes | None,
    index_bytes: bytes | None,
    raw: dict[str, bytes],
    root: Path | None,
) -> Package:
    if manifest_bytes is None:
        raise PackageError(label, "package/package.json is missing: this is not a FHIR package")
    try:
        manifest = orjson.loads(manifest_bytes)
        name, version = manifest["name"], manifest["version"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise PackageError(label, f"package.json is unusable ({exc!r})", "package/package.json") from exc
    pkg = Package(name=name, version=version, manifest=manifest, entries=[], source=label, _root=root)
    pkg._raw = raw
    entries: list[Entry] = []
    if index_bytes is not None:
        try:
            index = orjson.loads(index_bytes)
            for item in index.get("files", []):
                filename = item.get("filename")
                if not filename or not item.get("resourceType"):
                    continue
                entries.append(Entry(filename=filename, **{k: item.get(k) for k in _INDEX_KEYS}))
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            pkg.warnings.append(f"{pkg.id}: .index.json unusable ({exc}); rebuilt from the files")
            entries = []
        else:
            indexed = {e.filename for e in entries}
            # Examples are not in the root index: add them by scanning their files.
            extra = {k: v for k, v in raw.items() if "/" in k and k not in indexed}
            entries.extend(_scan(pkg, extra))
    if not entries:
        entries = _scan(pkg, raw)
    pkg.entries = entries
    return pkg


def _scan(pkg: Package, raw: dict[str, bytes]) -> list[Entry]:
    entries = []
    for filename in sorted(raw):
        data = raw[filename]
        if _RESOURCE_TYPE.search(data) is None:
            pkg.warnings.append(f"{pkg.id}: {filename}: no resourceType; skipped")
            continue
        try:
            resource = orjson.loads(data)  # not cached: the raw bytes stay the lazy copy
        except orjson.JSONDecodeError as exc:
            pkg.warnings.append(f"{pkg.id}: {filename}: not valid JSON ({exc}); skipped")
            continue
        if not isinstance(resource, dict):
            pkg.warnings.append(f"{pkg.id}: {filename}: not a JSON object; skipped")
            continue
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            pkg.warnings.append(f"{pkg.id}: {filename}: no resourceType; skipped")
            continue
        fields: dict[str, Any] = {k: resource.get(k) for k in _INDEX_KEYS if isinstance(resource.get(k), str)}
        entries.append(Entry(filename=filename, **fields))
    return entries
