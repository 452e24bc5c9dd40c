"""A resource's logical id is an `id` (R4 Resource.id; the R4 package types it as a System.String,
the HL7 reference validator checks it on every resource): 1-64 letters, digits, '-' and '.'."""

from __future__ import annotations

from typing import Any

import pytest

from fhirschema.context import FhirContext
from fhirschema.validator import Validator
from tests.conftest import PACKAGES


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"]))


def _errors(validator: Validator, resource: dict[str, Any]) -> list[tuple[str, str]]:
    result = validator.validate(resource)
    return [(i.code, i.expression(result.resource_type)) for i in result.issues if i.severity == "error"]


@pytest.mark.parametrize("rid", ["a", "Pat-1.2", "0" * 64])
def test_ids_of_the_id_alphabet_are_valid(validator: Validator, rid: str) -> None:
    assert _errors(validator, {"resourceType": "Basic", "id": rid, "code": {"text": "x"}}) == []


@pytest.mark.parametrize(
    "rid", ["urn:uuid:be3ba855-6bef-4c36-92a1-8b76fefd3629", "a b", "a_b", "é", "0" * 65]
)
def test_other_ids_are_errors_on_every_resource(validator: Validator, rid: str) -> None:
    assert _errors(validator, {"resourceType": "Basic", "id": rid, "code": {"text": "x"}}) == [
        ("fs110", "Basic.id")
    ]
    # contained and Bundle entries' resources too
    inner = {"resourceType": "Basic", "id": rid, "code": {"text": "y"}}
    outer = {"resourceType": "Basic", "code": {"text": "x"}, "contained": [inner],
             "subject": {"reference": f"#{rid}"}}  # fmt: skip
    assert ("fs110", "Basic.contained[0].id") in _errors(validator, outer)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": inner}],
    }
    assert _errors(validator, bundle) == [("fs110", "Bundle.entry[0].resource.id")]
