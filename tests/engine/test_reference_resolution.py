"""Which references the HL7 reference validator judges (issue 10): a target's type only when the
reference resolves, a document's Composition references inside the Bundle, a search outcome
without identity. Resources of our own, against R4 core."""

from __future__ import annotations

from typing import Any

import pytest

from fhirschema.context import FhirContext
from fhirschema.validator import Validator
from tests.conftest import PACKAGES


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"]))


def _found(validator: Validator, resource: dict[str, Any]) -> list[tuple[str, str, str]]:
    result = validator.validate(resource)
    return [(i.code, i.severity, i.expression(result.resource_type)) for i in result.issues]


def _observation(ref: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "performer": [{"reference": ref}], **more}  # fmt: skip


def test_an_unresolved_reference_of_another_type_is_a_warning(validator: Validator) -> None:
    # Observation.performer does not allow Encounter; unresolved, the reference does not judge it
    # (fhir-test-cases type-ref-unchecked): a warning, the resource stays valid.
    assert _found(validator, _observation("Encounter/e1")) == [
        ("fs1001", "warning", "Observation.performer[0].reference")
    ]
    assert _found(validator, _observation("Practitioner/p1")) == []


def test_a_resolved_target_of_another_type_is_an_error(validator: Validator) -> None:
    contained = [{"resourceType": "Encounter", "id": "e1", "status": "finished",
                  "class": {"code": "AMB"}}]  # fmt: skip
    assert _found(validator, _observation("#e1", contained=contained)) == [
        ("fs1001", "error", "Observation.performer[0].reference")
    ]
    entries = [
        {"fullUrl": "http://example.org/fhir/Observation/o1", "resource": {**_observation("Encounter/e1"), "id": "o1"}},
        {"fullUrl": "http://example.org/fhir/Encounter/e1",
         "resource": {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}}},
    ]  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    assert _found(validator, bundle) == [
        ("fs1001", "error", "Bundle.entry[0].resource.performer[0].reference")
    ]
    # The same reference in a Bundle that does not hold it: unresolved again.
    alone = {"resourceType": "Bundle", "type": "collection", "entry": entries[:1]}
    assert _found(validator, alone) == [
        ("fs1001", "warning", "Bundle.entry[0].resource.performer[0].reference")
    ]


def _document(composition: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    base = {"resourceType": "Composition", "status": "final", "type": {"text": "note"}, "date": "2024-01-01",
            "title": "t", "author": [{"reference": "urn:uuid:a1"}]}  # fmt: skip
    entries = [
        {"fullUrl": "urn:uuid:c1", "resource": {**base, **composition}},
        {"fullUrl": "urn:uuid:a1", "resource": {"resourceType": "Organization", "name": "o"}},
        *more,
    ]
    return {"resourceType": "Bundle", "type": "document", "identifier": {"value": "d1"},
            "timestamp": "2024-01-01T00:00:00Z", "entry": entries}  # fmt: skip


def test_a_documents_composition_references_resolve_inside_it(validator: Validator) -> None:
    assert _found(validator, _document({})) == []
    missing = _document({"subject": {"reference": "Patient/p1"}})
    assert _found(validator, missing) == [("fs1204", "error", "Bundle.entry[0].resource.subject.reference")]
    section = _document({"section": [{"title": "s", "entry": [{"reference": "urn:uuid:x9"}]}]})
    assert _found(validator, section) == [
        ("fs1204", "error", "Bundle.entry[0].resource.section[0].entry[0].reference")
    ]


def test_other_references_of_a_document_may_point_outside_it(validator: Validator) -> None:
    # Another entry's reference, or an extension's on the Composition: not among the references a
    # document must hold (the reference validator resolves the Composition's own ones).
    rule = {
        "fullUrl": "urn:uuid:g1",
        "resource": {"resourceType": "Organization", "name": "g", "partOf": {"reference": "Organization/x"}},
    }
    linked = _document({"section": [{"title": "s", "entry": [{"reference": "urn:uuid:g1"}]}]}, rule)
    assert _found(validator, linked) == []
    extension = {"url": "http://example.org/ext", "valueReference": {"reference": "Practitioner/p9"}}
    # (example.org's undefined extension itself is a warning, fs1101)
    assert _found(validator, _document({"extension": [extension]})) == [
        ("fs1101", "warning", "Bundle.entry[0].resource.extension[0]")
    ]


def test_a_search_outcome_needs_no_full_url(validator: Validator) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]}
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": outcome, "search": {"mode": "outcome"}}]}  # fmt: skip
    assert _found(validator, bundle) == []
    bundle["entry"][0]["search"] = {"mode": "match"}
    assert [c for c, *_ in _found(validator, bundle)] == ["fs1203"]


def _collection(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


def test_a_reference_resolved_in_the_bundle_is_judged_by_its_targets_real_type(validator: Validator) -> None:
    # From a urn-named entry, `Practitioner/x` names the entry `urn:uuid:x` (R4 §2.36.4.1 as the
    # reference resolves it, fhir-test-cases bad-bundle-reference-type-4): an Organization there
    # is not the Practitioner the reference says, although generalPractitioner allows both.
    patient = {
        "fullUrl": "urn:uuid:p1",
        "resource": {"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/x1"}]},
    }
    organization = {"fullUrl": "urn:uuid:x1", "resource": {"resourceType": "Organization", "name": "o"}}
    assert _found(validator, _collection(patient, organization)) == [
        ("fs1001", "error", "Bundle.entry[0].resource.generalPractitioner[0].reference")
    ]
    practitioner = {"fullUrl": "urn:uuid:x1", "resource": {"resourceType": "Practitioner"}}
    assert _found(validator, _collection(patient, practitioner)) == []
    # A urn reference says no type: its target's type must be an allowed one.
    observation = {"fullUrl": "urn:uuid:o1", "resource": _observation("urn:uuid:e1")}
    encounter = {
        "fullUrl": "urn:uuid:e1",
        "resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}},
    }
    assert _found(validator, _collection(observation, encounter)) == [
        ("fs1001", "error", "Bundle.entry[0].resource.performer[0].reference")
    ]
    assert _found(validator, _collection(observation, {**practitioner, "fullUrl": "urn:uuid:e1"})) == []


def test_an_inner_bundle_resolves_against_its_own_entries(validator: Validator) -> None:
    # After a Bundle inside an entry, the next entries resolve against the outer Bundle again.
    observation = {"fullUrl": "urn:uuid:o1", "resource": _observation("urn:uuid:e1")}
    encounter = {
        "fullUrl": "urn:uuid:e1",
        "resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}},
    }
    inner = {
        "fullUrl": "urn:uuid:b1",
        "resource": _collection({"fullUrl": "urn:uuid:z1", "resource": {"resourceType": "Practitioner"}}),
    }
    assert _found(validator, _collection(inner, observation, encounter)) == [
        ("fs1001", "error", "Bundle.entry[1].resource.performer[0].reference")
    ]
