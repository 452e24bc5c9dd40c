"""A downloaded package tarball, checked before anything is stored.

`verify()` reads the tarball as a stream and enforces:
- integrity: `dist.shasum` (SHA-1, hex in any case) when the registry gives one; SHA-256 and
  SHA-1 are computed for every tarball and kept;
- limits: the uncompressed size and the number of entries are capped while decompressing, so a
  gzip bomb stops at the cap instead of filling memory;
- safety: an entry with `..` or an absolute path rejects the whole package;
- identity: `package/package.json` must parse and name the requested package and version;
- layout: npm-style tarballs keep every entry under `package/`; other layouts (files at the top,
  or under one other folder) are repacked under `package/`, deterministically.
Every failure is a `PackageRejected` naming the package, the file and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from fhirschema.ids import PackageId
from fhirschema.package import Package, dependency_list, load_files

PREFIX = "package/"


class PackageRejected(ValueError):
    """This tarball must not be stored: corrupt, hostile, or not the package asked for."""

    def __init__(self, package: str, message: str, file: str | None = None) -> None:
        self.package, self.file = package, file
        where = f"{package}: {file}" if file else package
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class TarLimits:
    max_unpacked_bytes: int = 1024 * 1024 * 1024
    max_entries: int = 200_000


@dataclass
class Verified:
    pid: PackageId
    tgz: bytes  # what gets stored: the download, or its repacked form when the layout was not npm's
    sha256: str  # of the downloaded bytes: what "the same package" means between runs
    sha1: str
    size: int
    manifest: dict[str, Any]
    normalised: bool = False
    dependencies: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # relative to package/

    def package(self) -> Package:
        """The engine's view of it (index, StructureDefinitions), without unpacking again."""
        return load_files(str(self.pid), self.files)

    @property
    def fhir_versions(self) -> list[str]:
        raw = self.manifest.get("fhirVersions") or self.manifest.get("fhir-version-list") or []
        return [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]


def digests(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest()


def verify(
    data: bytes,
    pid: PackageId,
    *,
    shasum: str | None = None,
    limits: TarLimits | None = None,
    any_version: bool = False,
) -> Verified:
    """Check a downloaded tarball (see the module docstring). `any_version`: a CI build
    (`current`) carries its real version in package.json, not the word `current`."""
    limits = limits or TarLimits()
    spec = str(pid)
    sha256, sha1 = digests(data)
    if shasum and shasum.strip().lower() != sha1:
        raise PackageRejected(
            spec, f"SHA-1 {sha1} does not match the registry's dist.shasum {shasum.lower()}; nothing stored"
        )
    files = _read_members(data, spec, limits)
    layout = _layout(files)
    manifest_name = "package.json" if layout is None else layout + "package.json"
    if manifest_name not in files:
        raise PackageRejected(spec, "no package/package.json: this is not a FHIR package", "package.json")
    manifest = _manifest(files[manifest_name], spec, manifest_name)
    name, version = manifest.get("name"), manifest.get("version")
    if name != pid.name or (not any_version and version != pid.version):
        raise PackageRejected(
            spec,
            f"package.json names {name}#{version}, not the requested {spec}; nothing stored",
            manifest_name,
        )
    strip = layout or ""
    inside = {name[len(strip) :]: body for name, body in files.items() if name.startswith(strip)}
    tgz, normalised = (data, False) if layout == PREFIX else (_repack(inside), True)
    deps = manifest.get("dependencies") or {}
    if not isinstance(deps, dict):
        raise PackageRejected(spec, "package.json 'dependencies' is not an object", manifest_name)
    return Verified(pid, tgz, sha256, sha1, len(data), manifest, normalised, dependency_list(deps), inside)


class _Capped(io.RawIOBase):
    """The decompressed stream, failing once it has produced more than `limit` bytes."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, limit: int, spec: str) -> None:
        self.inner, self.limit, self.spec, self.count = inner, limit, spec, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.inner.read(len(buffer))
        self.count += len(chunk)
        if self.count > self.limit:
            raise PackageRejected(
                self.spec, f"unpacks to more than {self.limit} bytes (a gzip bomb?); nothing stored"
            )
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _read_members(data: bytes, spec: str, limits: TarLimits) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    entries = 0
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(data)), limits.max_unpacked_bytes, spec)
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
            for member in tar:
                entries += 1
                if entries > limits.max_entries:
                    raise PackageRejected(spec, f"more than {limits.max_entries} entries; nothing stored")
                name = _safe_name(member.name, spec)
                if not member.isfile() or name is None:
                    continue  # directories, links, devices: never extracted, never needed
                handle = tar.extractfile(member)
                if handle is None:
                    raise PackageRejected(spec, "unreadable entry", member.name)
                files[name] = handle.read()
    except PackageRejected:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as e:
        raise PackageRejected(spec, f"corrupt tarball ({e}); nothing stored") from e
    return files


def _safe_name(name: str, spec: str) -> str | None:
    """The entry's path, `./` prefixes removed; `..` or an absolute path rejects the package."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise PackageRejected(spec, "absolute path in the tarball; nothing stored", name)
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackageRejected(spec, "'..' in an entry path; nothing stored", name)
    return "/".join(parts) or None


def _layout(files: dict[str, bytes]) -> str | None:
    """Where package.json sits: `package/` (npm), another top folder `x/`, or None (the top)."""
    if "package/package.json" in files:
        return PREFIX
    if "package.json" in files:
        return None
    tops = {name.split("/", 1)[0] for name in files if "/" in name}
    if len(tops) == 1 and not [n for n in files if "/" not in n]:
        return f"{tops.pop()}/"
    return PREFIX  # no manifest anywhere: reported by the caller


def _repack(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(files):
            info = tarfile.TarInfo(PREFIX + name)
            info.size, info.mode = len(files[name]), 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def _manifest(raw: bytes, spec: str, file: str) -> dict[str, Any]:
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise PackageRejected(spec, f"not valid JSON ({e}); nothing stored", file) from e
    if not isinstance(manifest, dict):
        raise PackageRejected(spec, "not a JSON object; nothing stored", file)
    return manifest
