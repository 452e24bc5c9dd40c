"""One ElementDefinition → one FHIRSchema element (no tree building here)."""

from __future__ import annotations

from typing import Any

BINDING_NAME_EXT = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bindingName"
DEFAULT_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/elementdefinition-defaulttype"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
# On a type profile: the element of that profile the value conforms to (a library of slices).
PROFILE_ELEMENT_EXT = "http://hl7.org/fhir/StructureDefinition/elementdefinition-profile-element"
# ElementDefinition extensions that constrain values (R5 elements carried into R4 profiles).
MIN_LENGTH_EXT = "http://hl7.org/fhir/StructureDefinition/minLength"
_R5_ELEMENT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition."
MUST_HAVE_VALUE_EXTS = (
    _R5_ELEMENT + "mustHaveValue",
    "http://hl7.org/fhir/StructureDefinition/elementdefinition-mustHaveValue",
)
NARRATIVE_CONTROL_EXTS = {
    "http://hl7.org/fhir/StructureDefinition/narrative-source-control": "narrativeSource",
    "http://hl7.org/fhir/StructureDefinition/narrative-language-control": "narrativeLanguage",
}
VALUE_ALTERNATIVES_EXTS = (
    _R5_ELEMENT + "valueAlternatives",
    "http://hl7.org/fhir/StructureDefinition/elementdefinition-valueAlternatives",
)

# Documentation-only keys, and keys the tree walk consumes itself.
DROPPED = frozenset(
    {
        "path", "slicing", "sliceName", "id", "mapping", "example", "alias", "condition",
        "comment", "definition", "requirements", "extension", "base",
        "label", "code", "sliceIsConstraining", "_choiceSlicing",
    }
)  # fmt: skip

# pattern[x]/fixed[x] suffixes that name a primitive: the schema uses the FHIR type name.
_PRIMITIVE_SUFFIX = {
    s[0].upper() + s[1:]: s
    for s in [
        "instant",
        "time",
        "date",
        "dateTime",
        "decimal",
        "boolean",
        "integer",
        "string",
        "uri",
        "base64Binary",
        "code",
        "id",
        "oid",
        "unsignedInt",
        "positiveInt",
        "markdown",
        "url",
        "canonical",
        "uuid",
        "integer64",
    ]
}


def type_name(code: str) -> str:
    """`Quantity` / `http://hl7.org/fhirpath/System.String` → the name used in choice keys."""
    name = code.rsplit("/", 1)[-1]
    return name[:1].upper() + name[1:]


def transform(el: dict[str, Any], sd: dict[str, Any]) -> dict[str, Any]:
    """Element body: cardinality folded into `array`/`min`/`max` plus a `_required` marker."""
    out: dict[str, Any] = {}
    types = el.get("type")
    for key, value in el.items():
        if key in DROPPED:
            continue
        if key.startswith("pattern") and len(key) > 7:
            out["pattern"] = {"type": _PRIMITIVE_SUFFIX.get(key[7:], key[7:]), "value": value}
        elif key.startswith("fixed") and len(key) > 5:
            out["fixed"] = {"type": _PRIMITIVE_SUFFIX.get(key[5:], key[5:]), "value": value}
        elif key == "constraint":
            if value:
                out["constraint"] = constraints(value)
        elif key == "binding":
            binding = _binding(value)
            if binding is not None:
                out["binding"] = binding
        elif key == "contentReference":
            out["elementReference"] = element_reference(value, sd)
        elif key not in ("type", "min", "max"):
            out[key] = value
    if "choices" in out:
        out.pop("binding", None)
    if types:
        first = types[0]
        code = first.get("code", "")
        if code == "Reference":
            refers = sorted({p for t in types for p in (t.get("targetProfile") or ())})
            if refers:
                out["refers"] = refers
        for ext in first.get("extension") or ():
            if ext.get("url") == FHIR_TYPE_EXT and isinstance(ext.get("valueUrl"), str):
                code = ext["valueUrl"]
                break
        out["type"] = code
        profiles = first.get("profile")
        if profiles:
            if code == "Extension":
                out["url"] = profiles[0]
            else:
                out["profiles"] = list(profiles)
                elements = _profile_elements(profiles, first.get("_profile"))
                if elements:
                    out["profileElements"] = elements
        if sd.get("kind") == "logical":
            for ext in el.get("extension") or ():
                if ext.get("url") == DEFAULT_TYPE_EXT and "valueCanonical" in ext:
                    out["defaultType"] = ext["valueCanonical"]
    elif "pattern" in out:
        out["type"] = out["pattern"]["type"]
    _value_rules(el, out)
    _cardinality(el, out)
    return out


def _profile_elements(profiles: list[Any], extras: Any) -> dict[str, str]:
    """`profile` url -> the element of it named by its `elementdefinition-profile-element`."""
    out: dict[str, str] = {}
    for url, extra in zip(profiles, extras if isinstance(extras, list) else (), strict=False):
        if not isinstance(url, str) or not isinstance(extra, dict):
            continue
        for ext in extra.get("extension") or ():
            value = ext.get("valueString") if isinstance(ext, dict) else None
            if isinstance(ext, dict) and ext.get("url") == PROFILE_ELEMENT_EXT and isinstance(value, str):
                out[url] = value
    return out


def _value_rules(el: dict[str, Any], out: dict[str, Any]) -> None:
    """minLength, mustHaveValue, valueAlternatives: extensions on the ElementDefinition."""
    for ext in el.get("extension") or ():
        url = ext.get("url") if isinstance(ext, dict) else None
        if url == MIN_LENGTH_EXT and isinstance(ext.get("valueInteger"), int):
            out["minLength"] = ext["valueInteger"]
        elif url in MUST_HAVE_VALUE_EXTS and ext.get("valueBoolean") is True:
            out["mustHaveValue"] = True
        elif url in VALUE_ALTERNATIVES_EXTS and isinstance(ext.get("valueCanonical"), str):
            out.setdefault("valueAlternatives", []).append(ext["valueCanonical"])
        elif url in NARRATIVE_CONTROL_EXTS and isinstance(ext.get("valueCode"), str):
            out[NARRATIVE_CONTROL_EXTS[url]] = ext["valueCode"]


def _cardinality(el: dict[str, Any], out: dict[str, Any]) -> None:
    lo = el.get("min")
    hi = el.get("max")
    if "url" in out:  # extension slice: keep the bounds as given
        if lo:
            out["min"] = lo
        if hi and hi != "*":
            out["max"] = int(hi)
        return
    hi_n = None if hi in (None, "*") else int(hi)
    if hi == "*" or (lo is not None and lo >= 2) or (hi_n is not None and hi_n >= 2):
        out["array"] = True
        if isinstance(lo, int) and lo > 0:
            out["min"] = lo
        if hi_n is not None:
            out["max"] = hi_n
    if lo == 1:
        out["_required"] = True
    if hi_n == 0:
        out["_excluded"] = True


def constraints(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        c["key"]: {"expression": c.get("expression"), "human": c.get("human"), "severity": c.get("severity")}
        for c in items
        if "key" in c
    }


def _binding(binding: dict[str, Any]) -> dict[str, Any] | None:
    if not binding.get("valueSet"):
        return None
    out = {"strength": binding.get("strength"), "valueSet": binding["valueSet"]}
    for ext in binding.get("extension") or ():
        if ext.get("url") == BINDING_NAME_EXT and ext.get("valueString"):
            out["bindingName"] = ext["valueString"]
    return out


def element_reference(ref: str, sd: dict[str, Any]) -> list[str]:
    base, _, local = ref.partition("#")
    if not local:
        raise ValueError(f"contentReference {ref!r} has no '#path' part")
    result = [base or sd.get("url", "")]
    for part in local.split(".")[1:]:
        result += ("elements", part)
    return result
