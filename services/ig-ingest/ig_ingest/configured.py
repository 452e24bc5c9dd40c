"""The configured registries, built from settings: the only hosts the service ever contacts."""

from __future__ import annotations

from pathlib import Path

from fhirschema_bus.settings import IngestSettings, PackageSettings
from ig_ingest.ci import CiBuilds
from ig_ingest.http import Http, HttpLimits
from ig_ingest.registries import DirectoryRegistry, HttpRegistry, Registry
from ig_ingest.resolver import Registries
from ig_ingest.tarballs import TarLimits

NPM = "npm+"


def http_limits(settings: IngestSettings) -> HttpLimits:
    return HttpLimits(
        timeout=settings.timeout_seconds,
        total_timeout=settings.download_timeout_seconds,
        attempts=max(1, settings.attempts),
        max_retry_after=settings.max_retry_after_seconds,
        max_bytes=settings.max_download_bytes,
    )


def make_registries(
    sources: list[str], settings: IngestSettings | None = None, *, http: Http | None = None
) -> Registries:
    """`sources` as FHIRSCHEMA_PACKAGE_SOURCES lists them: FHIR registry URLs, `npm+<url>`
    npm-style registries, or folders."""
    settings = settings or IngestSettings()
    bases = [s.removeprefix(NPM) for s in sources if s.removeprefix(NPM).startswith(("http://", "https://"))]
    ci = settings.ci_build_url.strip()
    extra = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    if http is None:
        tokens = {k.rstrip("/"): v.get_secret_value() for k, v in settings.registry_tokens.items()}
        http = Http([*bases, *extra, *([ci] if ci else [])], tokens=tokens, limits=http_limits(settings))
    registries: list[Registry] = []
    for spec in sources:
        if spec.startswith(NPM):
            registries.append(HttpRegistry(spec.removeprefix(NPM), http, kind="npm"))
        elif spec.startswith(("http://", "https://")):
            registries.append(HttpRegistry(spec, http))
        else:
            registries.append(DirectoryRegistry(Path(spec).expanduser()))
    limits = TarLimits(max_unpacked_bytes=settings.max_unpacked_bytes, max_entries=settings.max_entries)
    return Registries(registries, ci=CiBuilds(ci, http) if ci else None, limits=limits)


def registries_from_settings(packages: PackageSettings, settings: IngestSettings) -> Registries:
    return make_registries(packages.source_list(), settings)
