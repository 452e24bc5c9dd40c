"""`current` packages from the FHIR CI build (build.fhir.org), as FPL's BuildDotFhirDotOrgClient
reads it (PROTOCOL.md §4): `{base}/qas.json` lists builds as `{"package-id", "date", "repo"}`; the
newest build whose repo ends in `/main/qa.json` or `/master/qa.json` (or `/{branch}/qa.json`)
wins, and its tarball is `{base}/{repo without /qa.json}/package.tgz`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from ig_ingest.http import FetchError, Http
from ig_ingest.registries import RegistryError

QAS_BYTES = 64 * 1024 * 1024  # qas.json lists every CI build: ~0.5 MB captured, room to grow


def build_date(text: Any) -> datetime | None:
    """qas.json dates: `Mon, 11 Sep, 2023 04:37:21 +0000`."""
    if not isinstance(text, str):
        return None
    for fmt in ("%a, %d %b, %Y %H:%M:%S %z", "%a, %d %b %Y %H:%M:%S %z"):
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


def newest_build(qas: Any, name: str, branch: str | None = None) -> str | None:
    """The repo path (`HL7/ig/branches/master`) of the newest matching build, or None."""
    branches = (f"/{branch}/qa.json",) if branch else ("/main/qa.json", "/master/qa.json")
    best: tuple[datetime, str] | None = None
    for item in qas if isinstance(qas, list) else ():
        if not isinstance(item, dict) or item.get("package-id") != name:
            continue
        repo, when = item.get("repo"), build_date(item.get("date"))
        if not isinstance(repo, str) or not repo.endswith(branches) or when is None:
            continue
        if best is None or when > best[0]:
            best = (when, repo.removesuffix("/qa.json"))
    return best[1] if best else None


class CiBuilds:
    def __init__(self, base: str, http: Http) -> None:
        self.base = base.rstrip("/")
        self.http = http

    async def _get(self, url: str, max_bytes: int | None = None) -> bytes:
        try:
            body = await self.http.get(url, max_bytes=max_bytes)
        except FetchError as e:
            raise RegistryError(str(e)) from e
        if body is None:
            raise RegistryError(f"GET {url}: not found")
        return body.data

    async def tarball_url(self, name: str, branch: str | None) -> str | None:
        raw = await self._get(f"{self.base}/qas.json", QAS_BYTES)
        try:
            qas = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise RegistryError(f"{self.base}/qas.json is not JSON ({e})") from e
        repo = newest_build(qas, name, branch)
        return f"{self.base}/{repo}/package.tgz" if repo else None

    async def download(self, url: str) -> bytes:
        return await self._get(url)
