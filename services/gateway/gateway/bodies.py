"""Request bodies: content-type checks, a size limit, JSON / Bundle / array / NDJSON parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request

from fhirschema import jsoninput
from fhirschema.ids import PackageId
from fhirschema.jsoninput import JsonInputError, ParsedInput
from fhirschema.validator.issues import Issue, ValidationResult
from gateway.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.spans import member_spans

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


def parse_json(body: bytes) -> ParsedInput:
    """The body as the CLI reads the same bytes (`fhirschema.jsoninput`): 400 when it is not
    JSON or nested too deeply; repeated keys are issues of the result (the first value is kept)."""
    if not body.strip():
        raise BadRequest("empty request body; expected JSON")
    try:
        return jsoninput.parse(body)
    except JsonInputError as e:
        raise InvalidInput(e) from None


def parse_resource(body: bytes) -> ParsedInput:
    parsed = parse_json(body)
    if not isinstance(parsed.value, dict):
        raise BadRequest(f"expected a JSON object (a FHIR resource), got {type(parsed.value).__name__}")
    return parsed


def parse_document(body: bytes) -> dict[str, Any]:
    """A JSON object that is not validated (a StructureDefinition, a FHIRSchema): a repeated key
    is refused, since nothing would report which of its values was used."""
    parsed = parse_resource(body)
    if parsed.issues:
        raise BadRequest("; ".join(i.message for i in parsed.issues))
    return parsed.value


@dataclass(frozen=True)
class Item:
    """One resource of a batch; `failed` instead of a resource when its text cannot be taken
    (the result the CLI gives for such input: invalid, one fatal issue)."""

    index: int
    source: str
    resource: Any
    issues: tuple[Issue, ...] = ()  # findings of its JSON text (repeated keys)
    failed: ValidationResult | None = None


def parse_items(body: bytes, mt: str) -> list[Item]:
    """A Bundle (each entry.resource), a JSON array, or NDJSON (one resource per line).

    An NDJSON line is read as the CLI reads it: one that is not JSON (or too deep) is an item
    with its error, the others go on. A Bundle or array that is not JSON is refused whole (400);
    one that only nests too deeply somewhere is split, and each too-deep item is an error."""
    if mt in NDJSON_TYPES:
        items: list[Item] = []
        for lineno, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parsed = jsoninput.parse(line)
            except JsonInputError as e:
                items.append(Item(len(items), f"line {lineno}", None, failed=e.result()))
                continue
            items.append(Item(len(items), f"line {lineno}", parsed.value, tuple(parsed.issues)))
        return items
    if not body.strip():
        raise BadRequest("empty request body; expected JSON")
    try:
        parsed = jsoninput.parse(body)
    except JsonInputError as e:
        if e.code != jsoninput.TOO_DEEP:
            raise InvalidInput(e) from None
        return _split_too_deep(body, e)
    members = _members(parsed.value)
    issues: dict[int, list[Issue]] = {}
    bundle = not isinstance(parsed.value, list)
    for issue in parsed.issues:  # [i, ...] or ["entry", i, "resource", ...]: the member's own
        path = issue.path
        index = path[1] if bundle and path[:1] == ["entry"] and path[2:3] == ["resource"] else None
        index = index if bundle else path[0] if path else None
        if not isinstance(index, int) or index >= len(members):
            raise BadRequest(f"the batch itself: {issue.message}")  # e.g. a repeated "entry"
        issues.setdefault(index, []).append(
            Issue(issue.code, issue.severity, path[3 if bundle else 1 :], issue.message,
                  line=issue.line, column=issue.column)
        )  # fmt: skip
    return [Item(i, str(i), res, tuple(issues.get(i, ()))) for i, res in enumerate(members)]


def _members(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            raise BadRequest("Bundle.entry must be an array")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "resource" not in entry:
                raise BadRequest(f"Bundle.entry[{i}] has no resource")
            out.append(entry["resource"])
        return out
    raise BadRequest("expected a Bundle, a JSON array of resources, or NDJSON (application/x-ndjson)")


def _split_too_deep(body: bytes, error: JsonInputError) -> list[Item]:
    """A Bundle or array that nests deeper than the bound somewhere: each member is read on its
    own, as the CLI reads one resource, so only the members that are too deep fail (positions
    stay those in the body)."""
    try:
        members = len(_members(orjson.loads(body)))  # the shape checks (orjson: <= 1023 levels)
    except orjson.JSONDecodeError:
        members = -1
    spans = member_spans(body)
    if members not in (-1, len(spans)):
        raise InvalidInput(error)
    items = []
    for i, (start, end) in enumerate(spans):
        lines = body.count(b"\n", 0, start)
        columns = len(body[body.rfind(b"\n", 0, start) + 1 : start].decode(errors="replace"))
        try:
            parsed = jsoninput.parse(body[start:end])
        except JsonInputError as e:
            at = _shift(e.line, e.column, lines, columns)
            items.append(Item(i, str(i), None, failed=JsonInputError(e.message, *at, e.code).result()))
            continue
        issues = []
        for x in parsed.issues:
            line, column = _shift(x.line or 1, x.column or 1, lines, columns)
            message = x.message.replace(f"line {x.line}, column {x.column}", f"line {line}, column {column}")
            issues.append(Issue(x.code, x.severity, x.path, message, line=line, column=column))
        items.append(Item(i, str(i), parsed.value, tuple(issues)))
    return items


def _shift(line: int, column: int, lines: int, columns: int) -> tuple[int, int]:
    """A position in a member's text as a position in the body (the member starts after `lines`
    newlines, `columns` characters into its line)."""
    return line + lines, column + columns if line == 1 else column


def requested(values: list[str]) -> list[str]:
    """The profiles (or packages) a request asks for, duplicates removed, order kept. Only what
    the caller asked for: the engine reads meta.profile itself, and an unresolvable one is a
    warning there (as in the CLI), while a requested profile that cannot be resolved is an error."""
    return list(dict.fromkeys(values))


def requested_packages(values: list[str]) -> list[str]:
    """The package contexts asked for (`?package=`), each a package id (`name#version`, or a bare
    name for its newest version): anything else — `../` in it, encoded or not — is a 400 here,
    never a lookup."""
    for value in values:
        name, version = PackageId.split(value)
        try:
            PackageId(name, version or "0")
        except ValueError as e:
            raise BadRequest(f"package {value!r}: {e}") from None
    return requested(values)
