"""Profile rules the HL7 reference validator applies (issue 10): required slices of an absent
element, constraints declared on primitive elements, memberOf() against the loaded terminology.
A profile of our own, against R4 core."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fhirschema.context import FhirContext
from fhirschema.invariants import Invariants
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator
from tests.conftest import PACKAGES, SHARED

PROFILE = "http://example.org/StructureDefinition/rules"
MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
VALUE_SET = {"resourceType": "ValueSet", "url": "http://example.org/ValueSet/married", "status": "active",
             "compose": {"include": [{"system": MARITAL, "concept": [{"code": "M"}]}]}}  # fmt: skip


def _profile() -> dict[str, Any]:
    elements = [
        {"id": "Patient", "path": "Patient", "constraint": [
            {"key": "rules-1", "severity": "error", "human": "married only",
             "expression": "maritalStatus.empty() or maritalStatus.memberOf('http://example.org/ValueSet/married')"}]},
        {"id": "Patient.identifier", "path": "Patient.identifier",
         "slicing": {"discriminator": [{"type": "pattern", "path": "system"}], "rules": "open"}},
        {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn", "min": 1},
        {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system", "patternUri": "urn:mrn"},
        {"id": "Patient.name.given", "path": "Patient.name.given", "constraint": [
            {"key": "rules-2", "severity": "error", "human": "short given names", "expression": "length() <= 5"}]},
    ]  # fmt: skip
    return {"resourceType": "StructureDefinition", "url": PROFILE, "name": "Rules", "kind": "resource",
            "type": "Patient", "derivation": "constraint", "abstract": False,
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "differential": {"element": elements}}  # fmt: skip


@pytest.fixture(scope="module")
def validator() -> Validator:
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"])
    ctx.add_resource(_profile())
    ctx.add_resource(VALUE_SET)
    return Validator(ctx, invariants=Invariants(), terminology=Terminology(ctx.resource))


def _errors(validator: Validator, resource: dict[str, Any]) -> list[tuple[str, str]]:
    result = validator.validate(resource, (PROFILE,))
    return sorted((i.code, i.expression(result.resource_type)) for i in result.errors())


GOOD = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}],
        "name": [{"given": ["Ann"]}], "maritalStatus": {"coding": [{"system": MARITAL, "code": "M"}]}}  # fmt: skip


def test_a_conforming_patient(validator: Validator) -> None:
    assert _errors(validator, GOOD) == []


def test_required_slices_of_an_absent_element(validator: Validator) -> None:
    # No identifier at all: the mrn slice (min 1) is missing, as when identifiers of another kind are there.
    absent = {k: v for k, v in GOOD.items() if k != "identifier"}
    assert _errors(validator, absent) == [("fs902", "Patient.identifier")]
    other = {**GOOD, "identifier": [{"system": "urn:other", "value": "1"}]}
    assert _errors(validator, other) == [("fs902", "Patient.identifier")]


def test_constraints_on_primitive_elements(validator: Validator) -> None:
    long = {**GOOD, "name": [{"given": ["Ann", "Bernadette"]}]}
    assert _errors(validator, long) == [("fs601", "Patient.name[0].given[1]")]


def test_member_of_uses_the_loaded_terminology(validator: Validator) -> None:
    single = {**GOOD, "maritalStatus": {"coding": [{"system": MARITAL, "code": "S"}]}}
    assert _errors(validator, single) == [("fs601", "Patient")]
    # A value set that cannot be expanded offline is not judged (empty: the constraint holds).
    unknown = Invariants().evaluate(
        "memberOf('http://example.org/ValueSet/none')", "x", resource={},
        terminology=validator.terminology,
    )  # fmt: skip
    assert unknown.ok is True


TEST_CASES = SHARED / "fhir-test-cases" / "validator" / "converted-from-xml"
DOCUMENT = "http://hl7.org/fhir/test/StructureDefinition/document-structure"
IMAGINARY = "http://hl7.org/fhir/test/CodeSystem/imaginary"


def test_slices_from_a_library_profile_element() -> None:
    # document-structure's section slices are typed by document-section-library's slices
    # (`elementdefinition-profile-element`): their codes tell sections apart, their rules apply.
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"])
    for name in ("document-structure.json", "document-section-library.json"):
        ctx.add_resource(json.loads((TEST_CASES / name).read_text()))
    validator = Validator(ctx)
    composition = json.loads((TEST_CASES / "document-bad-no-sections.json").read_text())

    def errors(sections: list[dict[str, Any]]) -> list[tuple[str, str]]:
        result = validator.validate(
            {**composition, "section": sections} if sections else composition, (DOCUMENT,)
        )
        return sorted((i.code, i.expression(result.resource_type)) for i in result.errors())

    def section(code: str, **more: Any) -> dict[str, Any]:
        return {"code": {"coding": [{"system": IMAGINARY, "code": code}]}, **more}

    a = section("code-a", focus={"reference": "Patient/1"})
    b = section("code-b", title="B")
    assert errors([a, b]) == []
    assert errors([]) == [("fs902", "Composition.section"), ("fs902", "Composition.section")]
    assert errors([section("code-a"), section("code-b")]) == [
        ("fs301", "Composition.section[0].focus"),
        ("fs301", "Composition.section[1].title"),
    ]
    assert errors([a, b, section("code-x")]) == [("fs901", "Composition.section[2]")]
