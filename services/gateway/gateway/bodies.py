"""Request bodies: content-type checks, a size limit, JSON / Bundle / array / NDJSON parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = frozenset({"application/json", "application/fhir+json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/fhir+ndjson"})


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, allowed: frozenset[str]) -> str:
    mt = media_type(request)
    if mt not in allowed:
        got = mt or "no Content-Type"
        raise UnsupportedMediaType(
            f"unsupported content type {got!r}; use one of {', '.join(sorted(allowed))}"
        )
    return mt


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it exceeds `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    if declared:  # common case: one read, no chunk list
        body = await request.body()
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("empty request body; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}") from None


def parse_resource(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BadRequest(f"expected a JSON object (a FHIR resource), got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Item:
    index: int
    source: str
    resource: Any


def parse_items(body: bytes, mt: str) -> list[Item]:
    """A Bundle (each entry.resource), a JSON array, or NDJSON (one resource per line)."""
    if mt in NDJSON_TYPES:
        items: list[Item] = []
        for lineno, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"malformed JSON on line {lineno}: {e}") from None
            items.append(Item(len(items), f"line {lineno}", res))
        return items
    data = parse_json(body)
    if isinstance(data, list):
        return [Item(i, str(i), res) for i, res in enumerate(data)]
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            raise BadRequest("Bundle.entry must be an array")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "resource" not in entry:
                raise BadRequest(f"Bundle.entry[{i}] has no resource")
            out.append(Item(i, str(i), entry["resource"]))
        return out
    raise BadRequest("expected a Bundle, a JSON array of resources, or NDJSON (application/x-ndjson)")


def profiles_of(resource: dict[str, Any], query: list[str]) -> list[str]:
    """Profiles from ?profile= first, then meta.profile; duplicates removed, order kept."""
    meta = resource.get("meta")
    declared = meta.get("profile") if isinstance(meta, dict) else None
    out = list(query)
    if isinstance(declared, list):
        out += [p for p in declared if isinstance(p, str)]
    return list(dict.fromkeys(out))
