"""Slice discriminators → a `match` pattern, shared by the converter and the validator.

`match` is a deep-partial pattern over the data. Discriminators that are not about values are
written with operator keys the validator understands:
`{"$type": ["Quantity"]}`, `{"$profile": [url, ...]}`, `{"$exists": true}`.
The public converters leave `match` empty for type/profile/exists; we do not.
"""

from __future__ import annotations

import copy
import re
from typing import Any

_EXTENSION_CALL = re.compile(r"^extension\(['\"]([^'\"]+)['\"]\)$")
_OF_TYPE = re.compile(r"^(.*)\.ofType\((\w+)\)$")


def _segments(path: str) -> list[str] | None:
    path = path.strip()
    if path in ("$this", ""):
        return []
    parts = []
    for part in _split_path(path):
        if part == "$this":
            continue
        if part == "resolve()":
            return None  # needs the referenced resource: cannot be a static pattern
        parts.append(part)
    return parts


def _split_path(path: str) -> list[str]:
    """`extension('http://a.b/c').value` → [`extension('http://a.b/c')`, `value`]: dots inside
    a function's arguments do not separate steps."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(path):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(path[start:i])
            start = i + 1
    parts.append(path[start:])
    return parts


def _schema_at(schema: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in parts:
        if node is None:
            return None
        m = _EXTENSION_CALL.match(part)
        if m:
            node = _extension_slice(node, m.group(1))
            continue
        node = _child(node, part)
    return node


def _child(node: dict[str, Any], part: str) -> dict[str, Any] | None:
    """A child element; when the element is sliced and the child lives in a slice, that one."""
    found = (node.get("elements") or {}).get(part)
    if found is not None:
        return found
    for entry in ((node.get("slicing") or {}).get("slices") or {}).values():
        found = (entry.get("schema", {}).get("elements") or {}).get(part)
        if found is not None:
            return found
    return None


def _extension_slice(node: dict[str, Any], url: str) -> dict[str, Any] | None:
    ext = (node.get("elements") or {}).get("extension") or {}
    for slice_ in ((ext.get("slicing") or {}).get("slices") or {}).values():
        schema = slice_.get("schema") or {}
        if schema.get("url") == url or (slice_.get("match") or {}).get("url") == url:
            return schema
    return None


def _condition(kind: str, node: dict[str, Any], key: str | None) -> Any:
    if kind in ("value", "pattern"):
        found = node.get("fixed") or node.get("pattern")
        if found is not None:
            return found.get("value")
        if "url" in node and key == "url":
            return node["url"]
        return None
    if kind == "type":
        if node.get("choices"):
            return {"$type": [c[len(key or "") :] for c in node["choices"]] if key else node["choices"]}
        if node.get("type"):
            return {"$type": [node["type"]]}
        return None
    if kind == "profile":
        profiles = node.get("profiles") or ([node["url"]] if node.get("url") else None)
        return {"$profile": profiles} if profiles else None
    if kind == "exists":
        if node.get("_excluded") or node.get("max") == 0:
            return {"$exists": False}
        if node.get("_required") or node.get("min", 0) >= 1:
            return {"$exists": True}
    return None


def build_match(discriminators: list[dict[str, Any]] | None, schema: dict[str, Any]) -> dict[str, Any]:
    """The pattern an array item must satisfy to belong to the slice described by `schema`."""
    match: dict[str, Any] = {}
    for disc in discriminators or ():
        kind = disc.get("type") or "value"
        raw_path = disc.get("path") or "$this"
        if raw_path.endswith("resolve()") and kind in ("type", "profile"):
            _put_resolved(match, schema, kind, raw_path)
            continue
        type_filter = _OF_TYPE.match(raw_path)
        if type_filter:
            raw_path = type_filter.group(1)
        parts = _segments(raw_path)
        if parts is None:
            continue
        if parts == ["url"] and "url" in schema and kind in ("value", "pattern"):
            match["url"] = schema["url"]  # extension slice given by its profile
            continue
        ancestor = _fixed_ancestor(schema, parts) if kind in ("value", "pattern") else None
        if ancestor is not None:  # e.g. `code.coding.code` inside a patternCodeableConcept on `code`
            _put(match, schema, ancestor[0], ancestor[1])
            continue
        if kind == "exists" and parts:
            # min >= 1 / max = 0 have been hoisted into the parent's required / excluded lists
            parent = _schema_at(schema, parts[:-1]) if parts[:-1] else schema
            if parent is not None and parts[-1] in (parent.get("required") or ()):
                _put(match, schema, parts, {"$exists": True})
            elif parent is not None and parts[-1] in (parent.get("excluded") or ()):
                _put(match, schema, parts, {"$exists": False})
            continue
        node = _schema_at(schema, parts) if parts else schema
        if node is None and kind == "type" and parts:
            # Type discriminator on a choice (`content` of `payload`): the slice names its
            # variants (`contentString`), so the item must carry one of those.
            parent = _schema_at(schema, parts[:-1]) if parts[:-1] else schema
            prefix = parts[-1]
            types = [
                key[len(prefix) :]
                for key in (parent or {}).get("elements") or {}
                if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper()
            ]
            if types:
                _put(match, schema, parts, {"$type": types})
            continue
        if node is None:
            # Value discriminator on a choice path: `value` is `valueQuantity` etc. in the schema
            if parts and kind in ("value", "pattern"):
                parent = _schema_at(schema, parts[:-1]) or {}
                last = parts[-1]
                variants = [
                    (k, v)
                    for k, v in (parent.get("elements") or {}).items()
                    if (
                        v.get("choiceOf") == last
                        or (k.startswith(last) and k[len(last) : len(last) + 1].isupper())
                    )
                    and ("fixed" in v or "pattern" in v)
                ]
                if len(variants) == 1:
                    _put(match, schema, [*parts[:-1], variants[0][0]], _condition(kind, variants[0][1], None))
            continue
        value = _condition(kind, node, parts[-1] if parts else None)
        if value is None and kind == "type" and type_filter:
            value = {"$type": [type_filter.group(2)]}
        if value is None:
            continue
        _put(match, schema, parts, value)
    return match


def _put_resolved(match: dict[str, Any], schema: dict[str, Any], kind: str, raw_path: str) -> None:
    """`item.resolve()` / `content.ofType(Reference).resolve()`: the slice is told apart by the
    referenced resource, its type or profile (`{"$resolve": {"type"|"profile": [...]}}`)."""
    path = raw_path[: -len("resolve()")].rstrip(".")
    type_filter = _OF_TYPE.match(path)
    if type_filter:
        path = type_filter.group(1)
    parts = _segments(path)
    if not parts:
        return
    if type_filter:
        parts[-1] += type_filter.group(2)[:1].upper() + type_filter.group(2)[1:]
    node = _schema_at(schema, parts)
    refers = (node or {}).get("refers") or []
    if not refers:
        return
    want = [url.rsplit("/", 1)[-1] for url in refers] if kind == "type" else list(refers)
    _put(match, schema, parts, {"$resolve": {kind: want}})


def _fixed_ancestor(schema: dict[str, Any], parts: list[str]) -> tuple[list[str], Any] | None:
    node: dict[str, Any] | None = schema
    for i, part in enumerate(parts[:-1]):
        node = _child(node or {}, part)
        if node is None:
            return None
        found = node.get("fixed") or node.get("pattern")
        if found is not None:
            return parts[: i + 1], found.get("value")
    return None


def _put(match: dict[str, Any], schema: dict[str, Any], parts: list[str], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, dict | list):
        value = copy.deepcopy(value)  # never alias (and later merge into) the SD's own objects
    if not parts:
        if isinstance(value, dict):
            _merge(match, value)
        else:
            match["$value"] = value
        return
    # Walk down creating objects; array-valued elements become one-item lists (partial match
    # semantics: some data item must match).
    target = match
    node: dict[str, Any] | None = schema
    for i, part in enumerate(parts):
        ext = _EXTENSION_CALL.match(part)
        node = _extension_slice(node or {}, ext.group(1)) if ext else _child(node or {}, part)
        key = "extension" if ext else part
        last = i == len(parts) - 1
        if ext:
            item = _find_or_add_ext(target, ext.group(1))
            if last:
                _merge(item, value if isinstance(value, dict) else {"$value": value})
            target = item
            continue
        if last:
            if (
                node is not None
                and node.get("array")
                and not (isinstance(value, dict) and _is_operator(value))
            ):
                target[key] = value if isinstance(value, list) else [value]
            elif isinstance(target.get(key), dict) and isinstance(value, dict):
                _merge(target[key], value)
            else:
                target[key] = value
            return
        if node is not None and node.get("array"):
            holder = target.setdefault(key, [{}])
            target = holder[0] if isinstance(holder, list) and holder else target.setdefault(key, {})
        else:
            target = target.setdefault(key, {})


def _find_or_add_ext(target: dict[str, Any], url: str) -> dict[str, Any]:
    items = target.setdefault("extension", [])
    for item in items:
        if item.get("url") == url:
            return item
    item = {"url": url}
    items.append(item)
    return item


def _is_operator(value: dict[str, Any]) -> bool:
    return any(k.startswith("$") for k in value)


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
