"""Rules learnt from the HL7 reference validator (issue 10), each the FHIR specification's general
rule, on resources of our own."""

from __future__ import annotations

from typing import Any

import pytest

from fhirschema.context import FhirContext
from fhirschema.invariants import Invariants
from fhirschema.validator import Validator
from tests.conftest import PACKAGES

PROFILE = "http://example.org/StructureDefinition/limits"


def _profile() -> dict[str, Any]:
    elements = [
        {"path": "Patient.id", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/minLength",
                                              "valueInteger": 3}]},
        {"path": "Patient.name.family", "maxLength": 5},
        {"path": "Patient.multipleBirth[x]", "type": [{"code": "integer"}], "maxValueInteger": 4},
        {"path": "Patient.active", "extension": [
            {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.mustHaveValue",
             "valueBoolean": True}]},
    ]  # fmt: skip
    return {"resourceType": "StructureDefinition", "url": PROFILE, "kind": "resource", "type": "Patient",
            "derivation": "constraint", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "differential": {"element": elements}}  # fmt: skip


@pytest.fixture(scope="module")
def validator() -> Validator:
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"])
    ctx.add_resource(_profile())  # no name and no element ids: still converted, by path
    return Validator(ctx, invariants=Invariants())


def _codes(validator: Validator, resource: dict[str, Any], profiles: tuple[str, ...] = ()) -> list[str]:
    return [i.code for i in validator.validate(resource, profiles).errors()]


def test_value_limits(validator: Validator) -> None:
    good = {"resourceType": "Patient", "id": "abc", "name": [{"family": "Doe"}], "multipleBirthInteger": 2,
            "active": True}  # fmt: skip
    assert _codes(validator, good, (PROFILE,)) == []
    bad = {"resourceType": "Patient", "id": "ab", "name": [{"family": "Doelittle"}], "multipleBirthInteger": 5,
           "_active": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                      "valueCode": "unknown"}]}}  # fmt: skip
    assert sorted(_codes(validator, bad, (PROFILE,))) == ["fs208", "fs209", "fs209", "fs210"]


def test_an_id_alone_is_not_content(validator: Validator) -> None:
    assert _codes(validator, {"resourceType": "Patient", "_implicitRules": {"id": "i1"}}) == ["fs202"]
    assert _codes(validator, {"resourceType": "Patient", "maritalStatus": {"id": "m"}}) == ["fs202"]


def test_undefined_extensions(validator: Validator) -> None:
    def ext(url: str) -> dict[str, Any]:
        return {"resourceType": "Patient", "extension": [{"url": url, "valueBoolean": True}]}

    # Nothing can check it, so it is not allowed, except in the example domains (a warning).
    assert _codes(validator, ext("http://acme.org/fhir/StructureDefinition/flag")) == ["fs1101"]
    assert _codes(validator, ext("http://example.org/fhir/StructureDefinition/flag")) == []
    assert _codes(validator, ext("http://hl7.org/fhir/tools/StructureDefinition/x")) == []


def test_type_name_at_the_start_of_a_fhirpath_path() -> None:
    patient = {"resourceType": "Patient", "active": True}
    assert Invariants().evaluate("Patient.active.not()", patient, resource=patient).ok is False
    assert Invariants().evaluate("Observation.status.exists()", patient, resource=patient).ok is False
