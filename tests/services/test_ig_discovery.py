"""Masks resolved through the catalog and the package feeds (the captured package-feeds.json and
feeds, served by the local registry at local URLs), honouring package-restrictions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ig_ingest.configured import make_registries
from ig_ingest.discovery import Discovery, feed_items, literal_prefix, parse_feeds

from tests.conftest import SHARED
from tests.services.registry_server import Registry, make_package, serve_registry

REGISTRY = SHARED / "fhir" / "registry"
AU_FEED = "http://hl7.org.au/fhir/package-feed.xml"
NZ_FEED = "https://github.com/HL7NZ/hl7-nz-package-feed/blob/main/package-feed.xml?raw=true"
HL7_FEED = "http://hl7.org/fhir/package-feed.xml"


def rss(*titles: str) -> bytes:
    items = "".join(f"<item><title>{t}</title><link>http://example.org/{t}.tgz</link></item>" for t in titles)
    return (f'<?xml version="1.0" encoding="UTF-8"?><rss xmlns:fhir="http://hl7.org/fhir/feed" version="2.0">'
            f"<channel><title>t</title>{items}</channel></rss>").encode()  # fmt: skip


@pytest.fixture
def feeds() -> Iterator[tuple[Registry, str]]:
    """The local registry serving the real feeds file, with every feed URL moved onto it."""
    doc: dict[str, Any] = json.loads((REGISTRY / "ig-registry" / "package-feeds.json").read_text())
    with serve_registry() as reg:
        moved = {f["url"]: f"{reg.origin}/feeds/{i}.xml" for i, f in enumerate(doc["feeds"])}
        for f in doc["feeds"]:
            f["url"] = moved[f["url"]]
        for r in doc["package-restrictions"]:
            r["feeds"] = [moved.get(u, u) for u in r["feeds"]]
        reg.files["/ig-registry/package-feeds.json"] = json.dumps(doc).encode()
        path = lambda url: moved[url].removeprefix(reg.origin)  # noqa: E731
        reg.files[path(AU_FEED)] = (REGISTRY / "package-feeds" / "hl7au-package-feed.xml").read_bytes()
        reg.files[path(NZ_FEED)] = (REGISTRY / "package-feeds" / "hl7nz-package-feed.xml").read_bytes()
        # HL7's own feed announcing an AU package: refused (hl7.fhir.au.* only from HL7 AU's feed);
        # a US package from it is fine (hl7.fhir.* lists this feed).
        reg.files[path(HL7_FEED)] = rss("hl7.fhir.au.sneaky#1.0.0", "hl7.fhir.us.core#6.1.0")
        reg.add(
            "hl7.fhir.au.local", "1.0.0", make_package("hl7.fhir.au.local", "1.0.0")
        )  # in the catalog only
        reg.add("hl7.fhir.us.mcode", "3.0.0", make_package("hl7.fhir.us.mcode", "3.0.0"))
        yield reg, f"{reg.origin}/ig-registry/package-feeds.json"


def test_feed_parsing_and_restrictions() -> None:
    items = feed_items((REGISTRY / "package-feeds" / "hl7au-package-feed.xml").read_bytes())
    assert len(items) == 41 and ("hl7.fhir.au.base", "5.0.0") in items
    f = parse_feeds(json.loads((REGISTRY / "ig-registry" / "package-feeds.json").read_text()))
    assert len(f.feeds) == 75
    assert f.allowed("hl7.fhir.au.base", AU_FEED) and not f.allowed("hl7.fhir.au.base", HL7_FEED)
    assert f.allowed("hl7.fhir.us.core", HL7_FEED) and not f.allowed(
        "hl7.fhir.us.core", AU_FEED
    )  # order: hl7.fhir.*
    assert f.allowed("org.example.ig", AU_FEED)  # no restriction names it
    assert literal_prefix("hl7.fhir.us.*") == "hl7.fhir.us." and literal_prefix("a?b*") == "a"
    with pytest.raises(ValueError, match="DTD"):
        feed_items(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><rss/>')


async def test_masks_through_catalog_and_feeds(feeds: tuple[Registry, str]) -> None:
    reg, feeds_url = feeds
    discover = Discovery(make_registries([reg.base]), feeds_url)
    au = await discover(["hl7.fhir.au.*"])
    assert au == ["hl7.fhir.au.base", "hl7.fhir.au.core", "hl7.fhir.au.ereq", "hl7.fhir.au.local",
                  "hl7.fhir.au.pd", "hl7.fhir.au.rcpa"]  # fmt: skip
    assert await discover(["hl7.fhir.us.*", "fhir.org.nz.ig.*"]) == [
        "fhir.org.nz.ig.base", "hl7.fhir.us.core", "hl7.fhir.us.mcode",
    ]  # fmt: skip
    assert any(r.startswith("/catalog?") and "name=hl7.fhir.au." in r for r in reg.requests)
    # without a feeds file: the catalog alone
    assert await Discovery(make_registries([reg.base]))(["hl7.fhir.au.*"]) == ["hl7.fhir.au.local"]
    assert await discover([]) == []
