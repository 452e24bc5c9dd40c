"""Which package a spec means, and its tarball from the first registry that serves it.

Version rules (PROTOCOL.md §4), tried registry by registry in the configured order (a 404 or an
error tries the next; the first success wins):
- exact `1.2.3`; when no registry lists it, the `maj.min.x` retry the reference client does;
- a bare name: `dist-tags.latest` if listed, else the highest stable version;
- `maj.min.x`: the highest matching release; other wildcards are rejected;
- `current` / `current$branch`: the newest CI build of the main (or that) branch (`ci.py`).
Unlisted (withdrawn) versions are never chosen by a rule; an exact request still gets them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from fhirschema.ids import PackageId, is_wildcard, newest, newest_matching, patch_wildcard
from ig_ingest.ci import CiBuilds
from ig_ingest.registries import Listing, Registry, RegistryError, VersionInfo
from ig_ingest.tarballs import TarLimits, Verified, verify


class NotFound(LookupError):
    """No configured registry has the package (each one's answer is in the message)."""


@dataclass
class Resolution:
    pid: PackageId
    requested: str  # the spec as asked: `name`, `name#1.2.x`, ...
    info: VersionInfo | None = None  # from the first registry that lists it
    note: str | None = None  # how a rule got there, e.g. "5.0.0 is in no registry; 5.0.x → 5.0.1"
    ci_tarball: str | None = None


@dataclass
class Fetched:
    resolution: Resolution
    verified: Verified
    source: str  # the registry (base URL or folder) that served the tarball


Rule = Callable[[Listing], str | None]


@dataclass
class _Lookup:
    """One package name's listings, fetched lazily and once per registry."""

    name: str
    listings: dict[str, Listing | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Registries:
    def __init__(
        self, registries: list[Registry], *, ci: CiBuilds | None = None, limits: TarLimits | None = None
    ) -> None:
        self.registries = registries
        self.ci = ci
        self.limits = limits or TarLimits()

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.registries]

    def only(self, base: str) -> Registries:
        """Just the configured registry `base` (a request's `registry`); ValueError otherwise."""
        wanted = base.rstrip("/")
        chosen = [r for r in self.registries if r.name.rstrip("/") == wanted]
        if not chosen:
            raise ValueError(
                f"registry {base} is not configured (FHIRSCHEMA_PACKAGE_SOURCES: {', '.join(self.names)}); "
                "only configured registries are ever contacted"
            )
        return Registries(chosen, ci=self.ci, limits=self.limits)

    async def _listing(self, reg: Registry, lookup: _Lookup) -> Listing | None:
        if reg.name in lookup.listings:
            return lookup.listings[reg.name]
        try:
            listing = await reg.listing(lookup.name)
        except RegistryError as e:
            lookup.errors[reg.name] = str(e)
            listing = None
        lookup.listings[reg.name] = listing
        return listing

    async def resolve(self, name: str, version: str | None) -> Resolution:
        requested = f"{name}#{version}" if version else name
        PackageId(name, version or "0")  # a name that is not a FHIR package id is never looked up
        if version == "dev":
            raise NotFound(f"{requested}: 'dev' is a local build, never served by a registry")
        if version is not None and version.startswith("current"):
            return await self._current(name, version, requested)
        lookup = _Lookup(name)
        for rule, note in self._rules(version):
            for reg in self.registries:
                listing = await self._listing(reg, lookup)
                chosen = rule(listing) if listing is not None else None
                if chosen is not None and listing is not None:
                    return Resolution(
                        PackageId(name, chosen), requested, listing.versions[chosen], note(chosen)
                    )
        raise NotFound(f"{requested}: {self._why(lookup, version)}")

    def _rules(self, version: str | None) -> list[tuple[Rule, Callable[[str], str | None]]]:
        def none(_: str) -> str | None:
            return None

        if version is None:

            def latest(listing: Listing) -> str | None:
                listed = listing.listed()
                return listing.latest if listing.latest in listed else newest(listed)

            return [(latest, none)]
        if is_wildcard(version):
            newest_matching(version, [])  # raises ValueError for a wildcard registries do not resolve
            return [(lambda listing: newest_matching(version, listing.listed()), none)]
        rules: list[tuple[Rule, Callable[[str], str | None]]] = [
            (lambda listing: version if version in listing.versions else None, none)
        ]
        if (pattern := patch_wildcard(version)) is not None:
            rules.append(
                (
                    lambda listing: newest_matching(pattern, listing.listed()),
                    lambda got: f"{version} is in no registry; {pattern} resolved to {got}",
                )
            )
        return rules

    def _why(self, lookup: _Lookup, version: str | None) -> str:
        reasons = []
        for reg in self.registries:
            if reg.name in lookup.errors:
                reasons.append(f"{reg.name}: {lookup.errors[reg.name]}")
            elif lookup.listings.get(reg.name) is None:
                reasons.append(f"{reg.name}: not found (unknown package)")
            else:
                listed = lookup.listings[reg.name].listed()  # type: ignore[union-attr]
                shown = ", ".join(listed[-5:]) or "none listed"
                reasons.append(f"{reg.name}: no matching version (has {shown})")
        return "; ".join(reasons) or "no registries configured"

    async def _current(self, name: str, version: str, requested: str) -> Resolution:
        if self.ci is None:
            raise NotFound(f"{requested}: CI builds are not configured (FHIRSCHEMA_IG_CI_BUILD_URL)")
        branch = version.partition("$")[2] or None
        url = await self.ci.tarball_url(name, branch)
        if url is None:
            raise NotFound(f"{requested}: no CI build of {name} on branch {branch or 'main/master'}")
        return Resolution(PackageId(name, version), requested, None, f"CI build {url}", ci_tarball=url)

    async def fetch(self, res: Resolution) -> Fetched:
        """The tarball, verified, from the first registry that lists this version and serves it.
        A tarball that fails verification fails the package (PackageRejected): a corrupt or
        tampered copy is not papered over by another registry's."""
        if res.ci_tarball is not None and self.ci is not None:
            data = await self.ci.download(res.ci_tarball)
            verified = await asyncio.to_thread(verify, data, res.pid, limits=self.limits, any_version=True)
            return Fetched(res, verified, res.ci_tarball)
        lookup = _Lookup(res.pid.name)
        errors: list[str] = []
        for reg in self.registries:
            listing = await self._listing(reg, lookup)
            info = listing.versions.get(res.pid.version) if listing is not None else None
            if info is None:
                continue
            try:
                tgz = await reg.tarball(res.pid, info)
            except RegistryError as e:
                errors.append(f"{reg.name}: {e}")
                continue
            if tgz is None:
                errors.append(f"{reg.name}: listed but the tarball is not served")
                continue
            verified = await asyncio.to_thread(verify, tgz, res.pid, shasum=info.shasum, limits=self.limits)
            return Fetched(res, verified, reg.name)
        errors += [f"{n}: {e}" for n, e in lookup.errors.items()]
        raise NotFound(f"{res.pid}: " + ("; ".join(errors) or "no registry serves it"))
