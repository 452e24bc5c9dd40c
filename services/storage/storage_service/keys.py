"""Where things live in S3: one place for the key layout."""

from __future__ import annotations

import hashlib
import re

from fhirschema.ids import PackageId

INDEX_RECORDS = "_index/records/"  # one object per SchemaRecord (no write races between replicas)
INDEX_RESOURCES = "_index/resources/"  # one object per package: canonical url -> tarball entry
UPLOADS = "_uploads/"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def schema_id(schema: dict, package: str | None, explicit: str | None = None) -> str:
    """Stable: the same schema (url|version + package) always gets the same id."""
    if explicit:
        return explicit
    name = slug(str(schema.get("name") or schema.get("id") or schema.get("url", "").rsplit("/", 1)[-1]))
    if package:
        return f"{package}/{name}"
    canon = f"{schema.get('url')}|{schema.get('version') or ''}"
    return f"{name}-{_digest(canon)[:10]}"


def schema_key(record_id: str, package: str | None) -> str:
    if package and record_id.startswith(f"{package}/"):
        return f"{PackageId.parse(package).prefix}{slug(record_id[len(package) + 1 :])}.json"
    return f"{UPLOADS}{slug(record_id)}-{_digest(record_id)[:8]}.json"


def record_key(record_id: str) -> str:
    return f"{INDEX_RECORDS}{_digest(record_id)}.json"


def resources_key(package: str) -> str:
    pid = PackageId.parse(package)
    return f"{INDEX_RESOURCES}{pid.name}/{pid.version}.json"
