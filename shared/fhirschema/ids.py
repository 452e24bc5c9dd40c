"""The identities the whole system agrees on: a package id and a canonical reference.

One value object per idea, used by the engine, the CLI and every service:

- `PackageId`: `name#version` (also read as `name@version`, as npm writes it), its ordering by
  version, and where its tarball lives in S3.
- `Canonical`: a canonical url with an optional `|version`, and the one rule for "a core type
  name vs a canonical url" (`Patient` means `http://hl7.org/fhir/StructureDefinition/Patient`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,213}$")  # npm package names, FHIR style
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,127}$")
_NUMERIC = re.compile(r"\d+")


def version_key(version: str | None) -> tuple[Any, ...]:
    """Order versions as semver does: numeric parts numerically, a release above its
    pre-releases (`1.0.0 > 1.0.0-ballot`), no version below every version."""
    if not version:
        return ((-1,), 0, "")
    core, _, pre = version.partition("-")
    nums = tuple(int(p) if _NUMERIC.fullmatch(p) else -1 for p in core.split("."))
    return (nums, 0 if pre else 1, pre)


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
