"""The local FHIR package cache, laid out as the FHIR tools lay it out.

`~/.fhir/packages/<name>#<version>/package/...` — the folder HAPI, SUSHI and Firely share.
`FHIR_PACKAGE_CACHE` (or an explicit root) moves it.
"""

from __future__ import annotations

import builtins
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from fhirschema.ids import PackageId, version_key
from fhirschema.package import Package, PackageError, load_directory, load_tgz

ENV_VAR = "FHIR_PACKAGE_CACHE"


def default_cache_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".fhir" / "packages"


class PackageCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_root()

    def folder(self, name: str, version: str) -> Path:
        return self.root / f"{name}#{version}"

    def list(self) -> list[tuple[str, str]]:
        """Installed packages as (name, version), sorted."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            if "#" in child.name and (child / "package" / "package.json").is_file():
                name, _, version = child.name.partition("#")
                found.append((name, version))
        return sorted(found, key=lambda nv: (nv[0], version_key(nv[1])))

    def versions(self, name: str) -> builtins.list[str]:
        return [v for n, v in self.list() if n == name]

    def resolve(self, spec: str) -> tuple[str, str] | None:
        """`name#version` (or `name@version`, or `name` for the newest) → installed (name, version)."""
        name, version = PackageId.split(spec)
        versions = self.versions(name)
        if not versions:
            return None
        if version in (None, "latest", "current"):
            return name, versions[-1]
        if version in versions:
            return name, version
        if version.endswith(".x"):  # patch wildcard: 6.1.x
            prefix = version[:-1]
            matching = [v for v in versions if v.startswith(prefix)]
            return (name, matching[-1]) if matching else None
        return None

    def load(self, spec: str) -> Package:
        resolved = self.resolve(spec)
        if resolved is None:
            raise PackageError(
                spec,
                f"not in the package cache {self.root}; install it with "
                f"`fhirschema packages install <file.tgz>`",
            )
        return load_directory(self.folder(*resolved))

    def install(self, tgz: str | Path, *, force: bool = False) -> Package:
        """Unpack a package tarball into the cache (atomically) and return it loaded."""
        package = load_tgz(tgz)  # validates the archive and reads name/version
        target = self.folder(package.name, package.version)
        if target.exists() and not force:
            return load_directory(target)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=self.root))
        try:
            with tarfile.open(tgz, "r:gz") as tar:
                tar.extractall(staging, filter="data")
            if not (staging / "package" / "package.json").is_file():
                raise PackageError(str(tgz), "archive has no package/package.json")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return load_directory(target)

    def remove(self, spec: str) -> bool:
        resolved = self.resolve(spec)
        if resolved is None:
            return False
        shutil.rmtree(self.folder(*resolved))
        return True
