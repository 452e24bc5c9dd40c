"""A set of loaded packages and loose resources that resolves canonicals and serves FHIRSchemas."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from fhirschema.cache import PackageCache
from fhirschema.converter import ConversionError, convert
from fhirschema.ids import PackageId, canonical_url, is_type_name
from fhirschema.package import Entry, Package, PackageError, load_package


class SchemaSource(Protocol):
    def schema(self, ref: str) -> dict[str, Any] | None:
        """FHIRSchema by canonical url, `url|version`, or type name (`Patient`)."""

    def resource(self, url: str) -> dict[str, Any] | None:
        """Raw canonical resource (StructureDefinition, ValueSet, CodeSystem) by url or `url|version`."""


_Located = tuple[Package, Entry] | dict[str, Any]


class FhirContext:
    def __init__(self, packages: Iterable[Package] = ()) -> None:
        self.packages: list[Package] = []
        self.warnings: list[str] = []
        self._by_url: dict[str, _Located] = {}
        self._schemas: dict[str, dict[str, Any] | None] = {}
        self._names: dict[str, str] = {}  # type name → url, for non-core types added loose
        for pkg in packages:
            self.add_package(pkg)

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[str | Path],
        *,
        cache: PackageCache | None = None,
        with_dependencies: bool = True,
        load: Callable[[str | Path, PackageCache], Package] = load_package,
    ) -> FhirContext:
        """Load packages (paths, folders, `name#version`) and, by default, their dependencies.
        `load` reads one spec (e.g. through the validator service's tarball cache).

        A dependency that cannot be found is a warning naming it, not a failure: published IGs
        routinely declare dependencies that a validator does not need (US Core 6.1.0 has nine).
        """
        ctx = cls()
        cache = cache or PackageCache()
        queue: list[tuple[str | Path, str | None]] = [(spec, None) for spec in specs]
        while queue:
            spec, required_by = queue.pop(0)
            pkg: Package | None
            if required_by is None:
                pkg = load(spec, cache)
            else:
                pkg = _find_dependency(str(spec), required_by, ctx, cache, load)
                if pkg is None:
                    continue
            if any(p.name == pkg.name for p in ctx.packages):
                continue
            ctx.add_package(pkg)
            if with_dependencies:
                for name, version in pkg.dependencies.items():
                    if not any(p.name == name for p in ctx.packages):
                        queue.append((f"{name}#{version}", pkg.source))
        return ctx

    # -- building -------------------------------------------------------------------------

    def add_package(self, pkg: Package) -> None:
        self.packages.append(pkg)
        self.warnings.extend(pkg.warnings)
        for entry in pkg.entries:
            if entry.url:
                # First registration wins: packages named first take precedence over dependencies.
                self._by_url.setdefault(entry.url, (pkg, entry))
                if entry.version:
                    self._by_url.setdefault(f"{entry.url}|{entry.version}", (pkg, entry))

    def add_resource(self, resource: dict[str, Any]) -> None:
        """A loose conformance resource (e.g. `--supporting` files); overrides package content."""
        if resource.get("resourceType") == "Bundle":
            for item in resource.get("entry") or ():
                if isinstance(item, dict) and isinstance(item.get("resource"), dict):
                    self.add_resource(item["resource"])
            return
        url = resource.get("url")
        if not isinstance(url, str):
            return
        self._by_url[url] = resource
        if resource.get("version"):
            self._by_url[f"{url}|{resource['version']}"] = resource
        self._schemas.pop(url, None)
        if (
            resource.get("resourceType") == "StructureDefinition"
            and resource.get("derivation") != "constraint"
        ):
            self._names.setdefault(resource.get("type", ""), url)

    def add_schema(self, schema: dict[str, Any]) -> None:
        """An already converted FHIRSchema (e.g. from a schema registry)."""
        url = schema.get("url")
        if isinstance(url, str):
            self._schemas[url] = schema
            if schema.get("version"):
                self._schemas[f"{url}|{schema['version']}"] = schema
            if schema.get("derivation") != "constraint" and schema.get("type"):
                self._names.setdefault(schema["type"], url)

    # -- lookups --------------------------------------------------------------------------

    def resource(self, url: str) -> dict[str, Any] | None:
        found = self._by_url.get(url)
        if found is None and "|" in url:
            found = self._by_url.get(url.split("|", 1)[0])
        if found is None:
            return None
        if isinstance(found, dict):
            return found
        pkg, entry = found
        try:
            return pkg.read(entry)
        except PackageError as exc:
            self.warnings.append(str(exc))
            return None

    def url_for(self, ref: str) -> str:
        """A type name (`Patient`) → its canonical url; urls pass through."""
        if not is_type_name(ref):
            return ref
        return self._names.get(ref) or canonical_url(ref)

    def schema(self, ref: str) -> dict[str, Any] | None:
        url = self.url_for(ref)
        if url in self._schemas:
            return self._schemas[url]
        sd = self.resource(url)
        schema = None
        if sd is not None and sd.get("resourceType") == "StructureDefinition":
            located = self._by_url.get(url) or self._by_url.get(url.split("|", 1)[0])
            pkg = located[0] if isinstance(located, tuple) else None
            try:
                schema = convert(sd, package=pkg)
            except ConversionError as exc:
                self.warnings.append(f"{url}: cannot convert: {exc}")
        if sd is not None or len(self._schemas) < 100_000:  # misses: urls from the data, bounded
            self._schemas[url] = schema
        return schema

    def entries(self, resource_type: str | None = None) -> Iterator[tuple[Package, Entry]]:
        for pkg in self.packages:
            for entry in pkg.entries:
                if resource_type is None or entry.resourceType == resource_type:
                    yield pkg, entry

    def resources_of_type(self, resource_type: str) -> Iterator[dict[str, Any]]:
        for pkg, entry in self.entries(resource_type):
            try:
                yield pkg.read(entry)
            except PackageError as exc:
                self.warnings.append(str(exc))

    def structure_definitions(self) -> Iterator[dict[str, Any]]:
        return self.resources_of_type("StructureDefinition")


def _find_dependency(
    spec: str, required_by: str, ctx: FhirContext, cache: PackageCache,
    load: Callable[[str | Path, PackageCache], Package] = load_package,
) -> Package | None:  # fmt: skip
    name, version = PackageId.split(spec)
    # Next to the package that needs it (a folder of `name#version.tgz` files), then the cache.
    folder = Path(required_by).parent
    candidates = [folder / f"{name}#{version}.tgz", *sorted(folder.glob(f"{name}#*.tgz"))]
    for candidate in candidates:
        if candidate.is_file():
            pkg = load(candidate, cache)
            if pkg.version != version:
                ctx.warnings.append(
                    f"dependency {name}#{version} of {required_by}: using {pkg.version} instead"
                )
            return pkg
    resolved = cache.resolve(spec) or cache.resolve(name)
    if resolved is not None:
        if resolved[1] != version:
            ctx.warnings.append(
                f"dependency {name}#{version} of {required_by}: using {resolved[1]} from the cache"
            )
        return cache.load(f"{resolved[0]}#{resolved[1]}")
    ctx.warnings.append(
        f"missing dependency {name}#{version} (required by {required_by}); "
        f"its resources will not resolve. Install it with `fhirschema packages install`."
    )
    return None
