"""Hostile input: never a crash, always a clear issue; memory and time stay bounded."""

from __future__ import annotations

import sys
import time

import pytest

from fhirschema.context import FhirContext
from fhirschema.invariants import Invariants
from fhirschema.validator import Validator
from tests.conftest import PACKAGES


@pytest.fixture(scope="module")
def validator() -> Validator:
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"])
    return Validator(ctx, invariants=Invariants())


@pytest.mark.parametrize("data", [[], "Patient", 42, None, True, [{"resourceType": "Patient"}]])
def test_non_object_json(validator: Validator, data: object) -> None:
    result = validator.validate(data)
    assert not result.valid
    assert result.issues[0].code == "fs202"
    assert result.to_outcome()["resourceType"] == "OperationOutcome"


def test_missing_and_unknown_resource_type(validator: Validator) -> None:
    missing = validator.validate({"id": "x"})
    assert not missing.valid and "resourceType" in missing.issues[0].message
    for strict in (False, True):  # an error in every mode (issue 9)
        result = Validator(validator.source, strict=strict).validate({"resourceType": "Nonsense"})
        assert not result.valid and result.issues[0].code == "fs701"


def test_requested_profile_that_is_not_loaded(validator: Validator) -> None:
    patient = {"resourceType": "Patient", "meta": {"profile": ["http://example.org/nowhere-meta"]}}
    result = validator.validate(patient, ["http://example.org/nowhere"])
    [asked] = [i for i in result.issues if "nowhere" in i.message and "meta" not in i.message]
    assert asked.code == "fs701" and asked.severity == "error" and not result.valid
    [meta] = [i for i in result.issues if "nowhere-meta" in i.message]
    assert meta.severity == "warning"  # as the HL7 validator does, outside strict mode


def test_ten_thousand_deep_nesting(validator: Validator) -> None:
    node: dict = {"linkId": "leaf", "type": "display"}
    for i in range(10_000):
        node = {"linkId": str(i), "type": "group", "item": [node]}
    resource = {"resourceType": "Questionnaire", "status": "active", "item": [node]}
    limit = sys.getrecursionlimit()
    result = validator.validate(resource)
    assert sys.getrecursionlimit() == limit
    assert not result.valid
    assert any(i.code == "fs1302" for i in result.issues)


def test_fifty_megabyte_resource(validator: Validator) -> None:
    data = "QUFB" * (50 * 1024 * 1024 // 4)
    resource = {"resourceType": "Binary", "contentType": "application/octet-stream", "data": data}
    started = time.perf_counter()
    result = validator.validate(resource)
    assert result.valid, result.issues
    assert time.perf_counter() - started < 30


def test_many_entries_bundle(validator: Validator) -> None:
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}",
                "resource": {"resourceType": "Patient", "id": str(i), "active": True}} for i in range(5_000)]  # fmt: skip
    result = validator.validate({"resourceType": "Bundle", "type": "collection", "entry": entries})
    assert result.valid, result.issues[:3]


def test_invalid_surrogates_are_reported(validator: Validator) -> None:
    result = validator.validate({"resourceType": "Patient", "name": [{"family": "Sm\ud800ith"}]})
    assert [(i.code, i.path) for i in result.errors()] == [("fs117", ["name", 0, "family"])]
    result.to_outcome()  # the outcome itself is still serialisable


def test_outcome_format(validator: Validator) -> None:
    result = validator.validate({"resourceType": "Patient", "name": [{"given": ["a", ""]}]})
    issue = result.to_outcome()["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] == "value"
    assert issue["expression"] == ["Patient.name[0].given[1]"]
    assert issue["details"]["coding"][0]["code"] == "fs117"
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">A</div>'}
    ok = validator.validate({"resourceType": "Patient", "text": narrative, "active": True}).to_outcome()
    assert ok["issue"] == [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]


def test_extension_context(validator: Validator) -> None:
    birth_time = {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueDateTime": "2020-01-01T10:00:00Z",
    }
    right = {"resourceType": "Patient", "birthDate": "2020-01-01", "_birthDate": {"extension": [birth_time]}}
    assert not [i for i in validator.validate(right).issues if i.code == "fs1103"]
    wrong = {"resourceType": "Patient", "gender": "male", "_gender": {"extension": [birth_time]}}
    [issue] = [i for i in validator.validate(wrong).issues if i.code == "fs1103"]
    # An error, as the HL7 validator decides (issue 10 class 5).
    assert issue.severity == "error" and "Patient.birthDate" in issue.message


def test_made_up_keys_do_not_grow_the_validator(validator: Validator) -> None:
    # A long-lived validator (a service replica) sees keys from untrusted data: the plans remember
    # unknown keys only up to a bound, and every made-up key is still reported.
    for i in range(3000):
        result = validator.validate({"resourceType": "Basic", "code": {"text": "x"}, f"made-up-{i}": 1})
        assert [issue.code for issue in result.issues].count("fs201") == 1
    plan = validator.compiler.type_plan("Basic")
    assert plan is not None
    assert len(plan._elements) <= len(plan.keys) + 256
