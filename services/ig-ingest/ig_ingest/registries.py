"""FHIR package registries: listings, catalog search and tarballs, from either public shape.

Both public registries (PROTOCOL.md §1-§3) are read: packages.fhir.org (PascalCase catalog,
lower-case `shasum`) and packages2.fhir.org (camelCase catalog with versions, upper-case
`shasum`, `count` as a string). A `Registry` is one configured source:

- `HttpRegistry(kind="fhir")`: a FHIR registry — `GET {base}/{name}` lists, the tarball is
  `GET {base}/{name}/{version}` (falling back to npm's `/{name}/-/{name}-{version}.tgz`);
- `HttpRegistry(kind="npm")`: a private npm-style registry — the tarball is the listing's
  `dist.tarball` (only on an allowed host), else npm's `/-/` form;
- `DirectoryRegistry`: a folder of `<name>#<version>.tgz` files (offline and tests).

A general npm registry is never consulted for FHIR packages unless it is configured as one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlencode

import orjson

from fhirschema.ids import PackageId, version_key
from ig_ingest.http import FetchError, Http

log = logging.getLogger("ig_ingest.registries")
LISTING_BYTES = 16 * 1024 * 1024  # a listing is JSON: US Core's is 24 KB, a big one ~1 MB
GZIP = b"\x1f\x8b"


class RegistryError(RuntimeError):
    """This registry could not answer (the next one is tried)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    shasum: str | None = None  # lower-case hex SHA-1 of the tarball, when the registry gives one
    tarball: str | None = None
    fhir_version: str | None = None
    date: str | None = None
    unlisted: bool = False  # withdrawn by its author: never chosen as latest or for a wildcard


@dataclass
class Listing:
    name: str
    registry: str
    description: str | None = None
    latest: str | None = None  # dist-tags.latest
    versions: dict[str, VersionInfo] = field(default_factory=dict)

    def listed(self) -> list[str]:
        return sorted((v for v, i in self.versions.items() if not i.unlisted), key=version_key)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    registry: str
    description: str | None = None
    fhir_version: str | None = None
    version: str | None = None  # the secondary names the latest version, the primary does not
    canonical: str | None = None


def _pick(d: dict[str, Any], key: str) -> Any:
    """Both casings: `name` / `Name` (HAPI reads them the same way)."""
    value = d.get(key)
    return d.get(key[:1].upper() + key[1:]) if value is None else value


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and str(value) else None


def _unlisted(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "1"))


def parse_listing(doc: Any, registry: str, name: str) -> Listing:
    """A registry's `GET /{name}` answer, normalised (PROTOCOL.md §1)."""
    if not isinstance(doc, dict):
        raise RegistryError(f"{registry}: the listing of {name} is not a JSON object")
    listing = Listing(name=name, registry=registry, description=_text(_pick(doc, "description")))
    tags = doc.get("dist-tags")
    if isinstance(tags, dict):
        listing.latest = _text(tags.get("latest"))
    versions = doc.get("versions")
    for key, raw in versions.items() if isinstance(versions, dict) else ():
        if not isinstance(raw, dict):
            continue
        version = _text(_pick(raw, "version")) or str(key)
        dist = raw["dist"] if isinstance(raw.get("dist"), dict) else {}
        shasum = _text(dist.get("shasum"))
        listing.versions[version] = VersionInfo(
            version=version,
            shasum=shasum.lower() if shasum else None,
            tarball=_text(dist.get("tarball")),
            fhir_version=_text(_pick(raw, "fhirVersion")),
            date=_text(raw.get("date")),
            unlisted=_unlisted(raw.get("unlisted")),
        )
    return listing


def parse_catalog(doc: Any, registry: str) -> list[CatalogEntry]:
    """`GET /catalog` in either casing (PROTOCOL.md §3); `[]` for anything else."""
    out = []
    for item in doc if isinstance(doc, list) else ():
        if isinstance(item, dict) and (name := _text(_pick(item, "name"))):
            out.append(
                CatalogEntry(
                    name=name, registry=registry,
                    description=_text(_pick(item, "description")),
                    fhir_version=_text(_pick(item, "fhirVersion")),
                    version=_text(_pick(item, "version")),
                    canonical=_text(_pick(item, "canonical")),
                )
            )  # fmt: skip
    return out


class Registry(Protocol):
    @property
    def name(self) -> str: ...
    async def listing(self, name: str) -> Listing | None: ...  # None: unknown here (404)
    async def tarball(self, pid: PackageId, info: VersionInfo | None) -> bytes | None: ...
    async def catalog(
        self, name: str | None, canonical: str | None, fhirversion: str | None
    ) -> list[CatalogEntry]: ...


class HttpRegistry:
    def __init__(self, base: str, http: Http, kind: Literal["fhir", "npm"] = "fhir") -> None:
        self.base = base.rstrip("/")
        self.http = http
        self.kind = kind

    @property
    def name(self) -> str:
        return self.base

    async def _get(self, url: str, accept: str, max_bytes: int | None = None) -> Any:
        try:
            return await self.http.get(url, accept=accept, max_bytes=max_bytes)
        except FetchError as e:
            raise RegistryError(str(e)) from e

    async def listing(self, name: str) -> Listing | None:
        body = await self._get(f"{self.base}/{name}", "application/json", LISTING_BYTES)
        if body is None:
            return None
        try:
            return parse_listing(orjson.loads(body.data), self.base, name)
        except orjson.JSONDecodeError as e:
            raise RegistryError(f"{self.base}: the listing of {name} is not JSON ({e})") from e

    async def tarball(self, pid: PackageId, info: VersionInfo | None) -> bytes | None:
        npm_form = f"{self.base}/{pid.name}/-/{pid.name}-{pid.version}.tgz"
        if self.kind == "npm":
            urls = [info.tarball] if info and info.tarball and self.http.allows(info.tarball) else []
            if info and info.tarball and not urls:
                log.warning("%s: dist.tarball %s is on another host; using %s", pid, info.tarball, npm_form)
            urls.append(npm_form)
        else:
            urls = [f"{self.base}/{pid.name}/{pid.version}", npm_form]
        for url in urls:
            body = await self._get(url, "application/gzip, application/octet-stream, */*")
            if body is None:
                continue
            if body.data[:2] == GZIP:
                return body.data
            if self.kind == "fhir" and body.data[:1] == b"{":
                # An npm-type server answers /{name}/{version} with the per-version manifest
                # (HAPI's PackageClient for NPM servers): follow its dist.tarball, if allowed.
                tarball = _manifest_tarball(body.data)
                if tarball and self.http.allows(tarball):
                    inner = await self._get(tarball, "application/gzip, */*")
                    if inner is not None and inner.data[:2] == GZIP:
                        return inner.data
                continue
            raise RegistryError(f"{url}: not a gzip tarball (content-type {body.content_type or '?'})")
        return None

    async def catalog(
        self, name: str | None, canonical: str | None, fhirversion: str | None
    ) -> list[CatalogEntry]:
        query = {"op": "find", "name": name or "", "pkgcanonical": "", "canonical": canonical or "",
                 "fhirversion": fhirversion or ""}  # fmt: skip
        body = await self._get(f"{self.base}/catalog?{urlencode(query)}", "application/json", LISTING_BYTES)
        if body is None:
            return []
        try:
            return parse_catalog(orjson.loads(body.data), self.base)
        except orjson.JSONDecodeError as e:
            raise RegistryError(f"{self.base}: the catalog answer is not JSON ({e})") from e


def _manifest_tarball(data: bytes) -> str | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    dist = doc.get("dist") if isinstance(doc, dict) else None
    return _text(dist.get("tarball")) if isinstance(dist, dict) else None


class DirectoryRegistry:
    """`<name>#<version>.tgz` (or `<name>-<version>.tgz`) files in one folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        return str(self.path)

    def _files(self, name: str) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if not self.path.is_dir():
            return found
        for sep in ("-", "#"):  # `#` wins when both exist
            for p in self.path.glob(f"{name}{sep}*.tgz"):
                version = p.name[len(name) + 1 : -4]
                try:
                    found[str(PackageId(name, version).version)] = p
                except ValueError:
                    continue
        return found

    async def listing(self, name: str) -> Listing | None:
        files = await asyncio.to_thread(self._files, name)
        if not files:
            return None
        versions = {v: VersionInfo(version=v) for v in files}
        return Listing(name=name, registry=self.name, versions=versions)

    async def tarball(self, pid: PackageId, info: VersionInfo | None) -> bytes | None:
        path = (await asyncio.to_thread(self._files, pid.name)).get(pid.version)
        return await asyncio.to_thread(path.read_bytes) if path else None

    async def catalog(
        self, name: str | None, canonical: str | None, fhirversion: str | None
    ) -> list[CatalogEntry]:
        if canonical or not self.path.is_dir():
            return []  # canonicals are inside the tarballs: not searched offline
        names = {p.name.split("#", 1)[0] for p in self.path.glob("*#*.tgz")}
        return [CatalogEntry(n, self.name) for n in sorted(names) if not name or name in n]
