"""fhirschema.cli.outcome: a result's OperationOutcome as orjson.dumps(result.to_outcome()) gives it."""

from __future__ import annotations

import orjson

from fhirschema import jsoninput
from fhirschema.cli.outcome import ALL_OK, outcome_json
from fhirschema.context import FhirContext
from fhirschema.validator import Issue, ValidationResult, Validator
from tests.conftest import EXAMPLES, PACKAGES


def test_the_bytes_are_orjsons_for_real_results() -> None:
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"], with_dependencies=False)
    validator = Validator(ctx)
    results = [
        jsoninput.validate(validator, p.read_bytes())
        for p in sorted((EXAMPLES / "r4-spec").glob("*.json"))[:150]
    ]
    assert sum(len(r.issues) > 1 for r in results) > 5
    for result in results:
        assert outcome_json(result) == orjson.dumps(result.to_outcome())


def test_the_bytes_are_orjsons_for_every_kind_of_issue() -> None:
    issues = [
        Issue("fs201", "warning", ["a", 0, "b"], 'q"uo\\te é \n\u2028 \x01', 'http://x/p"'),
        Issue("fs999", "bogus", [], "an unknown severity sorts last"),
        Issue("fs301", "fatal", [1, True], "", ""),
        Issue("fs1304", "error", ["x"], "repeated", line=3, column=4),  # the extensions: to_outcome()
        Issue("fs1301", "fatal", [], "not JSON", line=1),
        Issue("fs601", "information", ["contained", 2], "i", "http://p"),
    ]
    for n in range(len(issues)):
        for result in (ValidationResult(issues[n:]), ValidationResult(issues[: n + 1], "Patient")):
            assert outcome_json(result) == orjson.dumps(result.to_outcome())
    assert outcome_json(ValidationResult()) == ALL_OK == orjson.dumps(ValidationResult().to_outcome())
