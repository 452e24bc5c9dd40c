"""GET /ig/registry: the configured registries' catalogs merged, each package with its versions."""

from __future__ import annotations

import asyncio

from fhirschema.ids import version_key
from fhirschema_bus.contracts import RegistryAnswer, RegistryPackage, RegistryQuery
from ig_ingest.registries import RegistryError
from ig_ingest.resolver import Registries

MAX_LISTED = 50  # listings fetched per search (one request each)


async def search(regs: Registries, q: RegistryQuery) -> RegistryAnswer:
    answer = RegistryAnswer()
    merged: dict[str, RegistryPackage] = {}
    for reg in regs.registries:
        try:
            entries = await reg.catalog(q.name, q.canonical, q.fhirversion)
        except RegistryError as e:
            answer.errors.append(f"{reg.name}: {e}")
            continue
        for item in entries:
            merged.setdefault(item.name, RegistryPackage(name=item.name, description=item.description,
                                                         fhirVersion=item.fhir_version, registry=reg.name))  # fmt: skip
    names = sorted(merged)[:MAX_LISTED]

    async def versions(pkg: RegistryPackage) -> None:
        seen: set[str] = set()
        for reg in regs.registries:
            try:
                listing = await reg.listing(pkg.name)
            except RegistryError:
                continue
            if listing is None:
                continue
            pkg.latest = pkg.latest or listing.latest
            pkg.description = pkg.description or listing.description
            seen.update(listing.listed())
        pkg.versions = sorted(seen, key=version_key)

    await asyncio.gather(*(versions(merged[n]) for n in names))
    answer.packages = [merged[n] for n in names]
    return answer
