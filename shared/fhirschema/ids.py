"""The identities the whole system agrees on: a package id and a canonical reference.

One value object per idea, used by the engine, the CLI and every service:

- `PackageId`: `name#version` (also read as `name@version`, as npm writes it), its ordering by
  version, and where its tarball lives in S3; `newest` / `newest_matching` pick versions by the
  registries' rules (latest stable, `maj.min.x` patch wildcards) in that same order.
- `Canonical`: a canonical url with an optional `|version`, and the one rule for "a core type
  name vs a canonical url" (`Patient` means `http://hl7.org/fhir/StructureDefinition/Patient`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,213}$")  # npm package names, FHIR style
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_$-]{0,127}$")  # `$`: CI builds, `current$branch`
_NUMERIC = re.compile(r"\d+")
_PATCH_WILDCARD = re.compile(r"(\d+)\.(\d+)\.x")
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def version_key(version: str | None) -> tuple[Any, ...]:
    """Order versions as semver does: numeric parts numerically, a release above its
    pre-releases (`1.0.0 > 1.0.0-ballot`), no version below every version."""
    if not version:
        return ((-1,), 0, "")
    core, _, pre = version.partition("-")
    nums = tuple(int(p) if _NUMERIC.fullmatch(p) else -1 for p in core.split("."))
    return (nums, 0 if pre else 1, pre)


def is_prerelease(version: str) -> bool:
    """`6.1.0-snapshot1`, `4.0.0-ballot`: a tag after the numbers (never chosen as `latest`)."""
    return "-" in version


def is_wildcard(version: str) -> bool:
    """A version pattern rather than a version: `1.2.x` (the only form registries resolve)."""
    return "x" in version.lower().split(".")


def newest(versions: Iterable[str]) -> str | None:
    """The highest stable version, else the highest of all (HAPI's `getLatestVersion`)."""
    vs = list(versions)
    stable = [v for v in vs if not is_prerelease(v)]
    return max(stable or vs, key=version_key, default=None)


def newest_matching(pattern: str, versions: Iterable[str]) -> str | None:
    """The highest release `maj.min.N` for the pattern `maj.min.x` (semver `maxSatisfying`, so
    pre-releases never match). Any other wildcard (`x.x`, `1.x`, `1.x.x`) is a ValueError, as in
    the reference client: only the patch may float."""
    m = _PATCH_WILDCARD.fullmatch(pattern)
    if m is None:
        raise ValueError(f"unsupported version pattern {pattern!r}: only a patch wildcard such as 1.2.x")
    major, minor = m.groups()
    hits = [
        v
        for v in versions
        if (r := _RELEASE.fullmatch(v)) and int(r[1]) == int(major) and int(r[2]) == int(minor)
    ]
    return max(hits, key=version_key, default=None)


def patch_wildcard(version: str) -> str | None:
    """`5.0.0` -> `5.0.x`: the retry when an exact version is absent; None for other forms."""
    r = _RELEASE.fullmatch(version)
    return f"{r[1]}.{r[2]}.x" if r else None


@dataclass(frozen=True, order=False)
class PackageId:
    """A FHIR package at one version: `hl7.fhir.r4.core#4.0.1`."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"not a package name: {self.name!r} (letters, digits, '.', '-', '_')")
        if not _VERSION.match(self.version) or ".." in self.version:
            raise ValueError(f"not a package version: {self.version!r} in {self.name}")

    @classmethod
    def parse(cls, spec: str) -> PackageId:
        """`name#version` or `name@version`; a missing version is an error (see `split`)."""
        name, version = cls.split(spec)
        if version is None:
            raise ValueError(f"package id must be name#version, got {spec!r}")
        return cls(name, version)

    @staticmethod
    def split(spec: str) -> tuple[str, str | None]:
        """`name#version`, `name@version` or a bare `name` -> (name, version or None)."""
        spec = spec.strip()
        for sep in ("#", "@"):
            if sep in spec:
                name, _, version = spec.partition(sep)
                return name, version or None
        return spec, None

    def __str__(self) -> str:
        return f"{self.name}#{self.version}"

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return (self.name, version_key(self.version))

    def __lt__(self, other: PackageId) -> bool:
        return self.sort_key < other.sort_key

    @property
    def tgz_key(self) -> str:
        """The tarball's S3 key in the packages bucket."""
        return f"{self.name}/{self}.tgz"

    @property
    def prefix(self) -> str:
        """The S3 key prefix of what is stored per package (`name/version/`)."""
        return f"{self.name}/{self.version}/"


@dataclass(frozen=True)
class Canonical:
    """A canonical reference: `url` or `url|version`."""

    url: str
    version: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Canonical:
        """`url|version`, `url`, or a core type name (`Patient`), which names the core
        StructureDefinition of that type."""
        url, sep, version = ref.partition("|")
        return cls(canonical_url(url), version if sep and version else None)

    def __str__(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url


def is_type_name(ref: str) -> bool:
    """A bare type name (`Patient`, `string`) rather than a url: it has no ':' and no '/'."""
    return ":" not in ref and "/" not in ref


def canonical_url(ref: str) -> str:
    """A core type name -> its core StructureDefinition's url; urls pass through unchanged."""
    return CORE_SD + ref if is_type_name(ref) else ref
