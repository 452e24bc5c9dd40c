"""Package sources: where a `name#version` tarball comes from.

A `PackageSource` answers `fetch(name, version)` with the tarball bytes, or None when it does
not have the package (the next source is tried). Two kinds, chosen per entry of
FHIRSCHEMA_PACKAGE_SOURCES: a registry base URL (`GET {base}/{name}/{version}` -> tgz, as
packages.fhir.org and packages2.fhir.org/packages serve it) or a local directory of
`<name>#<version>.tgz` files. Later seams: registry discovery (`GET {base}/{name}` listings),
version resolution and dependencies plug in as other PackageSource implementations / wrappers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from fhirschema.ids import PackageId

log = logging.getLogger("ig_ingest.sources")
MAX_TGZ_BYTES = 512 * 1024 * 1024


class PackageNotFound(LookupError):
    pass


class SourceError(RuntimeError):
    """A source failed in a way retrying did not fix (the next source is still tried)."""


class PackageSource(Protocol):
    @property
    def name(self) -> str: ...

    def fetch(self, name: str, version: str) -> bytes | None: ...


@dataclass
class DirectorySource:
    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def fetch(self, name: str, version: str) -> bytes | None:
        for cand in (f"{name}#{version}.tgz", f"{name}-{version}.tgz"):
            p = self.path / cand
            if p.is_file():
                return p.read_bytes()
        return None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True  # connect/read timeouts, refused, reset
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code >= 500 or exc.response.status_code == 429
    )


class RegistrySource:
    """An FHIR package registry over HTTPS; designed for the real internet (timeouts, retries,
    redirects followed, size-capped)."""

    def __init__(self, base: str, client: httpx.Client | None = None, attempts: int = 4) -> None:
        self.base = base.rstrip("/")
        self.attempts = attempts
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=True,
            headers={"User-Agent": "fhirschema-ig-ingest/0.1", "Accept": "application/gzip, */*"},
        )

    @property
    def name(self) -> str:
        return self.base

    def fetch(self, name: str, version: str) -> bytes | None:
        url = f"{self.base}/{name}/{version}"

        @retry(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=8.0),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        def get() -> bytes | None:
            with self.client.stream("GET", url) as r:
                if r.status_code in (404, 410):
                    return None
                r.raise_for_status()
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_TGZ_BYTES:
                        raise SourceError(f"{url}: larger than {MAX_TGZ_BYTES} bytes")
                    chunks.append(chunk)
                data = b"".join(chunks)
            if data[:2] != b"\x1f\x8b":  # e.g. an npm JSON manifest or an HTML error page
                raise SourceError(f"{url}: not a gzip tarball (content-type {r.headers.get('content-type')})")
            return data

        try:
            return get()
        except (httpx.HTTPError, SourceError) as e:
            raise SourceError(f"{url}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self.client.close()


def make_sources(specs: list[str]) -> list[PackageSource]:
    out: list[PackageSource] = []
    for spec in specs:
        if spec.startswith(("http://", "https://")):
            out.append(RegistrySource(spec))
        else:
            out.append(DirectorySource(Path(spec).expanduser()))
    return out


def fetch_first(sources: list[PackageSource], spec: str) -> tuple[bytes, str]:
    """The tarball from the first source that has it, and that source's name."""
    try:
        pid = PackageId.parse(spec)
    except ValueError as e:
        raise PackageNotFound(str(e)) from e
    name, version = pid.name, pid.version
    errors: list[str] = []
    for src in sources:
        try:
            data = src.fetch(name, version)
        except SourceError as e:
            log.warning("source %s failed for %s: %s", src.name, spec, e)
            errors.append(str(e))
            continue
        if data is not None:
            return data, src.name
        errors.append(f"{src.name}: not found")
    raise PackageNotFound(
        f"{spec} not found in any source: " + "; ".join(errors or ["no sources configured"])
    )
