"""Slice `match` for every discriminator kind (the public converters leave type/profile/exists empty)."""

from __future__ import annotations

from typing import Any

from fhirschema.context import FhirContext
from fhirschema.converter import convert
from fhirschema.package import load_tgz
from fhirschema.validator import Validator
from tests.conftest import PACKAGES


def _sd(elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition", "url": "http://example.org/P", "name": "P", "kind": "resource",
        "type": "Observation", "derivation": "constraint",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "differential": {"element": elements},
    }  # fmt: skip


def test_type_discriminator_on_a_path() -> None:
    schema = convert(_sd([
        {"path": "Observation.component", "slicing": {"discriminator": [{"type": "type", "path": "value"}], "rules": "open"}},
        {"path": "Observation.component", "sliceName": "q"},
        {"path": "Observation.component.value[x]", "type": [{"code": "Quantity"}]},
        {"path": "Observation.component", "sliceName": "s"},
        {"path": "Observation.component.value[x]", "type": [{"code": "string"}]},
    ]))  # fmt: skip
    slices = schema["elements"]["component"]["slicing"]["slices"]
    assert slices["q"]["match"] == {"value": {"$type": ["Quantity"]}}
    assert slices["s"]["match"] == {"value": {"$type": ["String"]}}


def test_exists_discriminator() -> None:
    schema = convert(_sd([
        {"path": "Observation.component", "slicing": {"discriminator": [{"type": "exists", "path": "dataAbsentReason"}]}},
        {"path": "Observation.component", "sliceName": "missing"},
        {"path": "Observation.component.dataAbsentReason", "min": 1},
        {"path": "Observation.component", "sliceName": "present"},
        {"path": "Observation.component.dataAbsentReason", "max": "0"},
    ]))  # fmt: skip
    slices = schema["elements"]["component"]["slicing"]["slices"]
    assert slices["missing"]["match"] == {"dataAbsentReason": {"$exists": True}}
    assert slices["present"]["match"] == {"dataAbsentReason": {"$exists": False}}


def test_reslicing_keeps_the_parent_slice_match() -> None:
    schema = convert(_sd([
        {"path": "Observation.category", "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}]}},
        {"path": "Observation.category", "sliceName": "vs",
         "slicing": {"discriminator": [{"type": "pattern", "path": "text"}]},
         "patternCodeableConcept": {"coding": [{"code": "vital-signs"}]}},
        {"path": "Observation.category", "sliceName": "vs/special", "patternCodeableConcept": {"text": "special"}},
    ]))  # fmt: skip
    slicing = schema["elements"]["category"]["slicing"]
    assert slicing["discriminator"] == [
        {"type": "pattern", "path": "$this"}
    ]  # not overwritten by the reslice
    assert slicing["slices"]["vs"]["match"] == {"coding": [{"code": "vital-signs"}]}
    assert slicing["slices"]["vs/special"]["match"] == {
        "coding": [{"code": "vital-signs"}],
        "text": "special",
    }
    assert slicing["slices"]["vs"]["schema"]["slicing"]["discriminator"] == [
        {"type": "pattern", "path": "text"}
    ]


def test_value_discriminator_through_a_nested_slice() -> None:
    r4 = load_tgz(PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz")
    bp = next(sd for sd in r4.resources("StructureDefinition") if sd["url"].endswith("/bp"))
    slices = convert(bp)["elements"]["component"]["slicing"]["slices"]
    assert slices["SystolicBP"]["match"] == {
        "code": {"coding": {"code": "8480-6", "system": "http://loinc.org"}}
    }


def test_profile_discriminator_and_its_use_in_validation() -> None:
    ips = load_tgz(PACKAGES / "hl7.fhir.uv.ips#2.0.0.tgz")
    bundle = next(sd for sd in ips.resources("StructureDefinition") if sd["url"].endswith("Bundle-uv-ips"))
    slices = convert(bundle)["elements"]["entry"]["slicing"]["slices"]
    assert slices["patient"]["match"]["resource"]["$profile"] == [
        "http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips"
    ]


def test_extension_slices_match_by_url_without_a_stated_discriminator() -> None:
    schema = convert(_sd([
        {"path": "Observation.extension", "sliceName": "a",
         "type": [{"code": "Extension", "profile": ["http://example.org/ext/a"]}]},
    ]))  # fmt: skip
    assert schema["elements"]["extension"]["slicing"]["slices"]["a"]["match"] == {
        "url": "http://example.org/ext/a"
    }


def test_type_slices_classify_data() -> None:
    profile = _sd([
        {"path": "Observation.component", "slicing": {"discriminator": [{"type": "type", "path": "value"}], "rules": "closed"}},
        {"path": "Observation.component", "sliceName": "q", "min": 1},
        {"path": "Observation.component.value[x]", "type": [{"code": "Quantity"}]},
    ])  # fmt: skip
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"])
    ctx.add_resource(profile)
    validator = Validator(ctx)
    base = {"resourceType": "Observation", "status": "final", "code": {"text": "bp"}}
    ok = {**base, "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1}}]}
    bad = {**base, "component": [{"code": {"text": "a"}, "valueString": "x"}]}
    assert validator.validate(ok, [profile["url"]]).valid
    assert {i.code for i in validator.validate(bad, [profile["url"]]).issues} >= {"fs901", "fs902"}
