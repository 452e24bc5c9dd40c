"""Where things live in S3: one place for the key layout."""

from __future__ import annotations

import hashlib
import re

INDEX_RECORDS = "_index/records/"  # one object per SchemaRecord (no write races between replicas)
INDEX_RESOURCES = "_index/resources/"  # one object per package: canonical url -> tarball entry
UPLOADS = "_uploads/"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def split_package(package: str) -> tuple[str, str]:
    name, _, version = package.partition("#")
    return name, version or "current"


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
        name, version = split_package(package)
        return f"{name}/{version}/{slug(record_id[len(package) + 1 :])}.json"
    return f"{UPLOADS}{slug(record_id)}-{_digest(record_id)[:8]}.json"


def record_key(record_id: str) -> str:
    return f"{INDEX_RECORDS}{_digest(record_id)}.json"


def resources_key(package: str) -> str:
    name, version = split_package(package)
    return f"{INDEX_RESOURCES}{name}/{version}.json"


def package_key(package: str) -> str:
    name, version = split_package(package)
    return f"{name}/{name}#{version}.tgz"


def version_key(version: str | None) -> tuple:
    """Order versions semver-ish: numeric parts numerically, a pre-release below its release."""
    if not version:
        return ((-1,),)
    core, _, pre = version.partition("-")
    nums = tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.]", core))
    return (nums, 0 if pre else 1, pre)
