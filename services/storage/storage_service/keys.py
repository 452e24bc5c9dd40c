"""Schema identity and where things live in S3: one place for the key layout.

A schema's identity is its canonical `url|version` plus the package it came from (none for an
upload). Its id is derived from that identity alone: `<last url segment>-<16 hex digits of
sha256(package, url, version)>`, e.g. `Patient-1c9b0f43a2d8e617`. Deterministic (the same schema
always gets the same id), distinct for distinct identities (storage refuses, 409, the
astronomically unlikely id that two identities share), and made of URL-unreserved characters
only (`A-Z a-z 0-9 . _ -`), so an id goes into a URL path as it is.
"""

from __future__ import annotations

import hashlib
import re

from fhirschema.ids import PackageId

INDEX_RECORDS = "_index/records/"  # one object per SchemaRecord (no write races between replicas)
INDEX_CHUNKS = "_index/chunks/"  # one object per durable chunk of a package's records (durable.py)
UPLOADS = "_uploads/"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def schema_id(url: str, version: str | None, package: str | None) -> str:
    tail = slug(url.rstrip("/").rsplit("/", 1)[-1])[:64]
    identity = f"{package or ''}\n{url}|{version or ''}"
    return f"{tail}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def schema_key(record_id: str, package: str | None) -> str:
    try:
        return (
            f"{PackageId.parse(package).prefix}{record_id}.json" if package else f"{UPLOADS}{record_id}.json"
        )
    except ValueError:  # provenance that is not a package id (an upload's free text)
        return f"{UPLOADS}{slug(package or '')}/{record_id}.json"


def record_key(record_id: str) -> str:
    return f"{INDEX_RECORDS}{_digest(record_id)}.json"


def _package_prefix(package: str) -> str:
    try:
        return PackageId.parse(package).prefix
    except ValueError:  # provenance that is not a package id
        return f"_/{slug(package)}/"


def chunks_prefix(package: str) -> str:
    return f"{INDEX_CHUNKS}{_package_prefix(package)}"


def chunk_key(package: str, record_ids: list[str]) -> str:
    """Derived from the chunk's ids alone: the same chunk stored again overwrites its object."""
    return f"{chunks_prefix(package)}{_digest(chr(10).join(sorted(record_ids)))}.json"
