"""StructureDefinition → FHIRSchema (SPEC §1-2).

The differential is walked in order with a stack of open elements: each element's path is
compared with the previous one, finished components are closed (attached to their parent)
and new ones opened. Slices open on `sliceName` and close when the path leaves them.
"""

from __future__ import annotations

from typing import Any

from fhirschema.converter.choices import _collapse_type_slicing, _expand_choices
from fhirschema.converter.elements import constraints, transform
from fhirschema.slicing import build_match

__all__ = ["ConversionError", "convert"]


EXTENSION_DISCRIMINATOR = [{"type": "value", "path": "url"}]


class ConversionError(ValueError):
    """The input is not a StructureDefinition this converter can read."""


def convert(sd: Any, *, package: Any = None) -> dict[str, Any]:
    """Convert one StructureDefinition; `package` (name, version) is recorded as provenance."""
    if not isinstance(sd, dict):
        raise ConversionError(f"expected a JSON object, got {type(sd).__name__}")
    if sd.get("resourceType") != "StructureDefinition":
        raise ConversionError(f"not a StructureDefinition (resourceType {sd.get('resourceType')!r})")
    for key in ("type", "kind"):
        if not isinstance(sd.get(key), str):
            raise ConversionError(f"StructureDefinition {sd.get('url', '?')} has no {key!r}")
    schema = _header(sd, package)
    if sd["kind"] == "primitive-type":
        return schema
    diff = (sd.get("differential") or {}).get("element") or []
    if not isinstance(diff, list):
        raise ConversionError("differential.element must be a list")
    body: list[dict[str, Any]] = []
    for el in diff:
        path = el.get("path") if isinstance(el, dict) else None
        if not isinstance(path, str):
            raise ConversionError(f"differential element without a path: {el!r:.80}")
        if "." in path:
            body.append(el)
        elif el.get("constraint"):
            schema["constraint"] = constraints(el["constraint"])
    try:
        _Walk(sd, schema).run(_expand_choices(_collapse_type_slicing(body)))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConversionError(f"{sd.get('url', schema['name'])}: malformed differential ({exc!r})") from exc
    return schema


def _header(sd: dict[str, Any], package: Any) -> dict[str, Any]:
    kind = sd["kind"]
    if kind == "resource" and sd.get("derivation") == "constraint":
        klass = "profile"
    elif sd["type"] == "Extension":
        klass = "extension"
    else:
        klass = kind
    header: dict[str, Any] = {"name": _name(sd), "type": sd["type"], "kind": kind, "class": klass}
    for key in (
        "url",
        "version",
        "description",
        "package_name",
        "package_version",
        "package_id",
        "derivation",
    ):
        if sd.get(key):
            header[key] = sd[key]
    if sd.get("baseDefinition") and sd["type"] != "Element":
        header["base"] = sd["baseDefinition"]
    if sd.get("abstract"):
        header["abstract"] = True
    if package is not None:
        name, version = getattr(package, "name", None), getattr(package, "version", None)
        if name and version:
            header.update(package_name=name, package_version=version, package_id=f"{name}#{version}")
    return header


def _name(sd: dict[str, Any]) -> str:
    """`name` is 1..1 in R4, but hand-written profiles omit it: their id or url names them then."""
    for value in (sd.get("name"), sd.get("id"), str(sd.get("url") or "").rsplit("/", 1)[-1]):
        if isinstance(value, str) and value:
            return value
    raise ConversionError("StructureDefinition has no name, id or url")


class _Frame:
    """An open path component: its element node, its declared slicing, its open slice."""

    __slots__ = ("name", "node", "reslicing", "slice_bounds", "slice_name", "slice_node", "slicing")

    def __init__(self, name: str, node: dict[str, Any]) -> None:
        self.name = name
        self.node = node
        self.slicing: dict[str, Any] | None = None
        self.slice_name: str | None = None
        self.slice_node: dict[str, Any] = {}
        self.slice_bounds: dict[str, int] = {}
        self.reslicing: dict[str, Any] | None = None

    @property
    def target(self) -> dict[str, Any]:
        """Where children go: the open slice's schema, else the element itself."""
        return self.slice_node if self.slice_name else self.node


class _Walk:
    def __init__(self, sd: dict[str, Any], schema: dict[str, Any]) -> None:
        self.sd = sd
        self.schema = schema
        self.frames: list[_Frame] = []

    def run(self, elements: list[dict[str, Any]]) -> None:
        for el in elements:
            parts = el["path"].split(".")[1:]
            node = transform(el, self.sd)
            if "_choiceSlicing" in el:
                node["slicing"] = dict(el["_choiceSlicing"])
            common = 0
            for frame, name in zip(self.frames, parts, strict=False):
                if frame.name != name:
                    break
                common += 1
            slice_name = el.get("sliceName")
            if slice_name and common == len(parts):
                # A new slice of an element that is already open.
                self._close_to(len(parts))
                frame = self.frames[-1]
                self._close_slice(frame)
                self._open_slice(frame, slice_name, node, el)
                continue
            self._close_to(min(common, len(parts) - 1))
            for name in parts[len(self.frames) : -1]:
                self.frames.append(_Frame(name, {}))
            if slice_name:
                frame = _Frame(parts[-1], {})
                self.frames.append(frame)
                self._open_slice(frame, slice_name, node, el)
            else:
                frame = _Frame(parts[-1], node)
                if el.get("slicing"):
                    frame.slicing = {**el["slicing"], **_slicing_bounds(el)}
                self.frames.append(frame)
        self._close_to(0)
        _finish(self.schema)

    def _open_slice(self, frame: _Frame, name: str, node: dict[str, Any], el: dict[str, Any]) -> None:
        frame.slice_name = name
        frame.slice_node = node
        frame.slice_bounds = _bounds(el)
        frame.reslicing = el.get("slicing")

    def _close_to(self, depth: int) -> None:
        while len(self.frames) > depth:
            frame = self.frames.pop()
            self._close_slice(frame)
            node = frame.node
            # Slicing declared without slices here is not emitted (as the reference converters
            # do); the validator knows that extensions are sliced by url.
            if frame.slicing is not None and "slicing" in node:
                node["slicing"] = {**frame.slicing, **node["slicing"]}
            _attach(self.frames[-1].target if self.frames else self.schema, frame.name, node)

    def _close_slice(self, frame: _Frame) -> None:
        name = frame.slice_name
        if not name:
            return
        slicing = frame.node.setdefault("slicing", {})
        if frame.slicing is not None:
            for key, value in frame.slicing.items():
                slicing.setdefault(key, value)
        schema = frame.slice_node
        schema.pop("_required", None)
        schema.pop("_excluded", None)
        if frame.reslicing:
            schema["slicing"] = dict(frame.reslicing)
        discriminator = slicing.get("discriminator")
        if discriminator is None and frame.name in ("extension", "modifierExtension"):
            discriminator = EXTENSION_DISCRIMINATOR  # inherited from Element.extension
        entry: dict[str, Any] = {"match": build_match(discriminator, schema), "schema": schema}
        entry.update(frame.slice_bounds)
        slices = slicing.setdefault("slices", {})
        if "/" in name:  # a reslice also belongs to its parent slice
            parent = slices.get(name.split("/", 1)[0])
            if parent:
                entry["match"] = {**parent["match"], **entry["match"]}
        slices[name] = entry
        frame.slice_name = None
        frame.slice_node = {}


def _bounds(el: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    if el.get("min"):
        out["min"] = el["min"]
    if el.get("max") not in (None, "*"):
        out["max"] = int(el["max"])
    return out


def _slicing_bounds(el: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    if el.get("min") is not None:
        out["min"] = el["min"]
    if el.get("max") not in (None, "*"):
        out["max"] = int(el["max"])
    return out


def _attach(parent: dict[str, Any], name: str, node: dict[str, Any]) -> None:
    if node.pop("_required", False):
        required = parent.setdefault("required", [])
        key = node.get("choiceOf", name)
        if key not in required:
            required.append(key)
    if node.pop("_excluded", False):
        excluded = parent.setdefault("excluded", [])
        if name not in excluded:
            excluded.append(name)
        return
    if name == "extension":
        parent["extensions"] = _extension_slices(node)
    elements = parent.setdefault("elements", {})
    if name in elements:
        node = {**elements[name], **node}
    elements[name] = node


def _extension_slices(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, entry in ((node.get("slicing") or {}).get("slices") or {}).items():
        schema = entry.get("schema")
        if not schema:
            continue
        ext: dict[str, Any] = {}
        match = entry.get("match") or {}
        if "url" in match:
            ext["url"] = match["url"]
        if entry.get("min"):
            ext["min"] = entry["min"]
        if "max" in entry:
            ext["max"] = entry["max"]
        for key, value in schema.items():
            if key not in ("slicing", "elements", "type", "min"):
                ext[key] = value
        if schema.get("min") and "min" not in ext:
            ext["min"] = schema["min"]
        out[name] = ext
    return out


def _finish(node: dict[str, Any]) -> None:
    """Sort `required` (the reference converters emit sets); recurse into children and slices."""
    if "required" in node:
        node["required"].sort()
    for child in (node.get("elements") or {}).values():
        _finish(child)
    for entry in ((node.get("slicing") or {}).get("slices") or {}).values():
        _finish(entry["schema"])
