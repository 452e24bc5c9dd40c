"""Name masks (`hl7.fhir.us.*`) resolved to package ids: through every configured registry's
catalog and, when FHIRSCHEMA_IG_FEEDS_URL names a `package-feeds.json` (FHIR/ig-registry), through
the RSS package feeds it lists, honouring its `package-restrictions` (PROTOCOL.md §5).

A restriction is order-sensitive: the first whose mask matches a package id decides which feeds
may announce it; an id announced by any other feed is ignored (so a feed cannot claim another
jurisdiction's names). Only the feeds file's host and the feeds it lists are contacted, and only
for these documents: tarballs always come from the configured registries (resolver.Registries).
A mask is matched case-sensitively with shell wildcards (`*`, `?`), as the restrictions are.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import orjson

from ig_ingest.http import FetchError, Http, HttpLimits
from ig_ingest.registries import RegistryError
from ig_ingest.resolver import Registries

log = logging.getLogger("ig_ingest.discovery")
FEED_BYTES = 16 * 1024 * 1024


@dataclass
class Restriction:
    mask: str
    feeds: list[str]


@dataclass
class Feeds:
    feeds: list[str]
    restrictions: list[Restriction] = field(default_factory=list)

    def allowed(self, package: str, feed: str) -> bool:
        for r in self.restrictions:
            if fnmatchcase(package, r.mask):
                return feed in r.feeds
        return True


def parse_feeds(doc: Any) -> Feeds:
    """package-feeds.json: `feeds[].url` and `package-restrictions[] {mask, feeds[]}`."""
    if not isinstance(doc, dict):
        raise ValueError("package-feeds.json is not a JSON object")
    feeds = [
        f["url"] for f in doc.get("feeds") or [] if isinstance(f, dict) and isinstance(f.get("url"), str)
    ]
    restrictions = [
        Restriction(r["mask"], [u for u in r.get("feeds") or [] if isinstance(u, str)])
        for r in doc.get("package-restrictions") or []
        if isinstance(r, dict) and isinstance(r.get("mask"), str)
    ]
    return Feeds(feeds, restrictions)


def feed_items(xml: bytes) -> list[tuple[str, str]]:
    """(package id, version) of each `<item><title>{id}#{version}</title>` of an RSS 2.0 feed."""
    xml = xml.lstrip()  # HL7 AU's feed starts with a newline before its XML declaration
    if b"<!DOCTYPE" in xml[:4096] or b"<!ENTITY" in xml[:4096]:
        raise ValueError("a package feed with a DTD or entities is refused")  # no entity expansion
    root = ET.fromstring(xml)
    out = []
    for item in root.iter("item"):
        title = (item.findtext("title") or "").strip()
        name, sep, version = title.partition("#")
        if sep and name and version:
            out.append((name, version))
    return out


def literal_prefix(mask: str) -> str:
    """What a catalog `name=` (a substring match) may be asked for: up to the first wildcard."""
    cut = min((i for i in (mask.find("*"), mask.find("?")) if i >= 0), default=len(mask))
    return mask[:cut]


class Discovery:
    def __init__(self, registries: Registries, feeds_url: str = "", limits: HttpLimits | None = None) -> None:
        self.registries, self.feeds_url, self.limits = registries, feeds_url.strip(), limits or HttpLimits()

    async def __call__(self, masks: list[str]) -> list[str]:
        if not masks:
            return []
        found: set[str] = set()
        for mask in masks:
            found |= await self.catalog(mask)
        if self.feeds_url:
            found |= await self.from_feeds(masks)
        names = sorted(found)
        log.info("masks %s: %d packages (%s)", masks, len(names), ", ".join(names[:10]))
        return names

    async def catalog(self, mask: str) -> set[str]:
        names: set[str] = set()
        for reg in self.registries.registries:
            try:
                entries = await reg.catalog(literal_prefix(mask) or None, None, None)
            except (RegistryError, FetchError) as e:  # one registry down: the others still count
                log.warning("mask %s: the catalog of %s: %s", mask, reg.name, e)
                continue
            names |= {e.name for e in entries if fnmatchcase(e.name, mask)}
        return names

    async def _read(self, http: Http | None, where: str) -> bytes | None:
        if not where.startswith(("http://", "https://")):
            return await asyncio.to_thread(Path(where).expanduser().read_bytes)
        assert http is not None
        body = await http.get(where, accept="application/json, application/xml, */*", max_bytes=FEED_BYTES)
        return body.data if body is not None else None

    async def from_feeds(self, masks: list[str]) -> set[str]:
        remote = self.feeds_url.startswith(("http://", "https://"))
        http = Http([self.feeds_url], limits=self.limits) if remote else None
        try:
            data = await self._read(http, self.feeds_url)
            if data is None:
                raise FetchError(f"{self.feeds_url}: not found")
            feeds = parse_feeds(orjson.loads(data))
        except (OSError, FetchError, ValueError) as e:
            log.warning("package feeds %s cannot be read: %s", self.feeds_url, e)
            return set()
        urls = [u for u in feeds.feeds if u.startswith(("http://", "https://"))]
        feed_http = Http(urls, limits=self.limits) if urls else None  # the listed feeds, nothing else

        async def one(url: str) -> set[str]:
            try:
                xml = await self._read(feed_http, url)
                items = feed_items(xml) if xml else []
            except (OSError, FetchError, ValueError, ET.ParseError) as e:
                log.warning("package feed %s: %s", url, e)
                return set()
            ids = {n for n, _ in items if any(fnmatchcase(n, m) for m in masks)}
            refused = {n for n in ids if not feeds.allowed(n, url)}
            if refused:
                log.info(
                    "package feed %s: %s ignored (package-restrictions)", url, ", ".join(sorted(refused))
                )
            return ids - refused

        try:
            found = await asyncio.gather(*(one(u) for u in feeds.feeds))
        finally:
            for h in (http, feed_http):
                if h is not None:
                    await h.aclose()
        return set().union(*found)
