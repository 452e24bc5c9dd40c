"""FHIRPath's `is`/`as`/`ofType` on FHIR primitives (issue 10): a value is of its element's FHIR
type, and, as the HL7 reference decides it, named by the System type of the same name unqualified
(`dateTime is DateTime`, not `is System.DateTime`). Before, the value a constraint declared on a
primitive element was evaluated on carried no type (`$this as dateTime` was always empty: vs-1
never failed) and FHIR.boolean was never `Boolean` (que-7 failed on every valid `exists` question)."""

from __future__ import annotations

from typing import Any

import pytest
from fhirpathpy.engine.nodes import ResourceNode
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirschema.context import FhirContext
from fhirschema.converter import convert
from fhirschema.fastpath import compile_subset
from fhirschema.invariants import Invariants, _as_result
from fhirschema.validator import Validator
from tests.conftest import PACKAGES

# A value of each FHIR primitive, and the System type of the same name where there is one.
VALUES: dict[str, tuple[Any, str | None]] = {
    "boolean": (True, "Boolean"), "string": ("text", "String"), "integer": (7, "Integer"),
    "decimal": (1.5, "Decimal"), "date": ("2019-02", "Date"), "dateTime": ("2019", "DateTime"),
    "time": ("10:00:00", "Time"), "code": ("final", None), "uri": ("urn:x", None),
    "instant": ("2019-02-03T10:00:00Z", None), "positiveInt": (3, None), "markdown": ("*x*", None),
}  # fmt: skip
# FHIR R4's primitive specialisations (code is a string, url a uri, positiveInt an integer...).
ANCESTORS = {"code": {"string"}, "markdown": {"string"}, "positiveInt": {"integer"}}
INVARIANTS = Invariants()


def _ok(expression: str, value: Any, type_name: str | None) -> bool | None:
    return INVARIANTS.evaluate(expression, value, resource={}, path=type_name).ok


# How a type specifier names a primitive: its FHIR name (bare or FHIR.), or its System name.
FORMS = ("fhir", "FHIR.fhir", "System", "System.System")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(VALUES)), st.sampled_from(sorted(VALUES)), st.sampled_from(FORMS))
def test_a_primitive_is_its_type_and_no_other(actual: str, named: str, form: str) -> None:
    value, _ = VALUES[actual]
    system = VALUES[named][1]
    if form.endswith("System"):
        if system is None:
            return  # no System type of that name
        spec = system if form == "System" else f"System.{system}"
        # Unqualified, the reference matches the same-named primitive; qualified, FHIR data is
        # never a System value.
        expected = form == "System" and actual == named
    else:
        spec = named if form == "fhir" else f"FHIR.{named}"
        expected = actual == named or named in ANCESTORS.get(actual, ())
    for expression in (f"$this is {spec}", f"$this.is({spec})", f"$this.ofType({spec}).exists()",
                       f"($this as {spec}).exists()", f"$this.as({spec}).exists()"):  # fmt: skip
        assert _ok(expression, value, actual) is expected, (expression, actual)


def test_a_primitives_extension_object_is_the_same_element() -> None:
    """`{"answerBoolean": true, "_answerBoolean": {...}}` is one element, not two items."""
    node = {"operator": "exists", "answerBoolean": True, "_answerBoolean": {"extension": []}}
    assert _ok("answer is Boolean", node, "Questionnaire.item.enableWhen") is True


def test_system_values_keep_their_type() -> None:
    """Literals and function results are System values: not FHIR types."""
    assert _ok("'x' is String", {}, None) is True
    assert _ok("'x' is System.String", {}, None) is True
    assert _ok("'x' is FHIR.string", {}, None) is False
    assert _ok("(1 + 1) is Integer", {}, None) is True


@pytest.fixture(scope="module")
def validator() -> Validator:
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"])
    ctx.add_resource(_sliced_profile())
    return Validator(ctx, invariants=Invariants())


SLICED = "http://example.org/StructureDefinition/day-precision"


def _sliced_profile() -> dict[str, Any]:
    """US Core 6.1.0's us-core-1 and IPS's ips-1 on a choice sliced by type, as IPS declares it:
    the dateTime slice repeats none of the choice's constraints."""
    elements = [
        {"id": "Observation.effective[x]", "path": "Observation.effective[x]",
         "slicing": {"discriminator": [{"type": "type", "path": "$this"}], "rules": "open"},
         "type": [{"code": "dateTime"}, {"code": "Period"}], "constraint": [
            {"key": "day-1", "severity": "error", "human": "Datetime must be at least to day.",
             "expression": "$this is DateTime implies $this.toString().length() >= 10"},
            {"key": "day-2", "severity": "error", "human": "Datetime must be at least to day.",
             "expression": "$this.ofType(dateTime).empty() or ($this as dateTime).toString().length() >= 8"}]},
        {"id": "Observation.effective[x]:effectiveDateTime", "path": "Observation.effective[x]",
         "sliceName": "effectiveDateTime", "type": [{"code": "dateTime"}]},
    ]  # fmt: skip
    return {"resourceType": "StructureDefinition", "url": SLICED, "name": "DayPrecision", "kind": "resource",
            "type": "Observation", "derivation": "constraint", "abstract": False, "status": "draft",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "differential": {"element": elements}}  # fmt: skip


def _failed(validator: Validator, resource: dict[str, Any], profile: str | None = None) -> list[str]:
    result = validator.validate(resource, (profile,) if profile else ())
    return sorted(i.message.split()[1] for i in result.errors() if i.code == "fs601")


def _observation(**effective: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 44, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
            **effective}  # fmt: skip


HEART_RATE = "http://hl7.org/fhir/StructureDefinition/heartrate"


def test_vs1_on_a_dateTime_less_precise_than_a_day(validator: Validator) -> None:
    assert _failed(validator, _observation(effectiveDateTime="2019"), HEART_RATE) == ["vs-1"]
    assert _failed(validator, _observation(effectiveDateTime="2019-02-03"), HEART_RATE) == []
    assert _failed(validator, _observation(effectivePeriod={"start": "2019"}), HEART_RATE) == []


def test_the_choices_constraints_hold_on_a_type_slice(validator: Validator) -> None:
    assert _failed(validator, _observation(effectiveDateTime="2019-02"), SLICED) == ["day-1", "day-2"]
    assert _failed(validator, _observation(effectiveDateTime="2019-02-03"), SLICED) == []
    assert _failed(validator, _observation(effectivePeriod={"start": "2019"}), SLICED) == []
    schema = convert(_sliced_profile())
    assert set(schema["elements"]["effectiveDateTime"]["constraint"]) == {"day-1", "day-2"}


def _questionnaire(**answer: Any) -> dict[str, Any]:
    return {"resourceType": "Questionnaire", "status": "draft", "item": [
        {"linkId": "1", "type": "boolean"},
        {"linkId": "2", "type": "string", "enableWhen": [{"question": "1", "operator": "exists", **answer}]}]}  # fmt: skip


def test_que7_an_exists_question_answers_with_a_boolean(validator: Validator) -> None:
    assert _failed(validator, _questionnaire(answerBoolean=True)) == []
    assert _failed(validator, _questionnaire(answerCoding={"code": "x"})) == ["que-7"]


# Types an `Extension.value[x]` can hold, with a value of each (R4 §2.24.0.1, open types).
CHOICE_VALUES: dict[str, Any] = {
    **{t: v for t, (v, _) in VALUES.items()},
    "id": "abc", "url": "http://x", "canonical": "http://x/y", "oid": "urn:oid:1.2", "uuid": "urn:uuid:a",
    "unsignedInt": 0, "Quantity": {"value": 1}, "Age": {"value": 1, "unit": "a"}, "Duration": {"value": 2},
    "Coding": {"code": "x"}, "Period": {"start": "2019"},
}  # fmt: skip
TYPE_NAMES = sorted(
    {*CHOICE_VALUES, "Boolean", "String", "Integer", "DateTime", "Code", "Instant", "Element"}
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CHOICE_VALUES)), st.sampled_from(TYPE_NAMES))
def test_the_native_subset_agrees_on_a_choices_type(held: str, named: str) -> None:
    """`value.ofType(T)`, compiled natively to choice keys, answers as the full engine does:
    an Age is a Quantity, a code a string, `Code` names no type."""
    expression = f"value.ofType({named}).exists()"
    node = {"url": "http://example.org/x", "value" + held[:1].upper() + held[1:]: CHOICE_VALUES[held]}
    compiled = INVARIANTS.compile(expression)
    assert compiled.ast is not None
    full = _as_result(INVARIANTS._run(compiled.ast, ResourceNode.create_node(node, "Extension"), {}, None)).ok
    native = compile_subset(expression)
    fast = native(node, {"root": {}, "resource": {}}) if native is not None else None
    assert fast in (None, full), (held, named, fast, full)
