"""The native FHIRPath subset must agree with fhirpathpy wherever it gives an answer."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirschema.context import FhirContext
from fhirschema.fastpath import compile_subset
from fhirschema.fastpath.checks import US_CORE_17
from fhirschema.invariants import Invariants
from fhirschema.validator import Validator
from tests.conftest import EXAMPLES, PACKAGES


class Recorder(Invariants):
    """Evaluates every constraint both ways and records disagreements."""

    def __init__(self) -> None:
        super().__init__()
        self.compared = 0
        self.disagreements: list[tuple[str, str, object, object]] = []

    def evaluate(self, expression, node, *, resource, root=None, path=None, bundle=None, terminology=None):  # type: ignore[override]
        fast = compile_subset(expression)
        verdict = (
            fast(node, {"root": root if root is not None else resource, "resource": resource})
            if fast
            else None
        )
        if verdict is not None:
            slow = self.slow(expression, node, resource=resource, root=root, path=path, bundle=bundle)
            self.compared += 1
            if slow.ok is not None and slow.ok != verdict:
                self.disagreements.append((expression, str(path), verdict, slow.ok))
        return super().evaluate(
            expression, node, resource=resource, root=root, path=path, bundle=bundle, terminology=terminology
        )

    def slow(self, expression, node, **kw):
        import fhirschema.invariants as inv

        saved = inv.compile_subset, inv.guard
        inv.compile_subset = inv.guard = lambda e: None
        try:
            return super().evaluate(expression, node, **kw)
        finally:
            inv.compile_subset, inv.guard = saved


@pytest.mark.parametrize("folder", ["r4-spec", "hl7.fhir.us.core#6.1.0"])
def test_native_subset_agrees_with_fhirpathpy(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import fhirschema.validator.plans as plans

    # Route every constraint through Invariants.evaluate, where the recorder compares both ways.
    monkeypatch.setattr(plans, "compile_subset", lambda expression: None)
    monkeypatch.setattr(plans, "guard", lambda expression: None)
    ctx = FhirContext.from_specs(
        [PACKAGES / "hl7.fhir.us.core#6.1.0.tgz", PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"],
        with_dependencies=False,
    )
    recorder = Recorder()
    validator = Validator(ctx, invariants=recorder)
    files = sorted(Path(EXAMPLES / folder).glob("*.json"))[:300]
    for file in files:
        validator.validate(orjson.loads(file.read_bytes()))
    assert recorder.compared > 1000
    assert recorder.disagreements == []


def _invariant_issues(validator: Validator, resources: list[dict]) -> list[tuple[int, str, str]]:
    found = []
    for n, resource in enumerate(resources):
        for issue in validator.validate(resource).issues:
            if issue.code == "fs601":
                found.append((n, str(issue.path), issue.message))
    return found


def test_same_invariant_verdicts_with_and_without_the_native_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end over every R4 spec and US Core 6.1.0 example: identical fs601 issues."""
    import fhirschema.validator.plans as plans

    ctx = FhirContext.from_specs(
        [PACKAGES / "hl7.fhir.us.core#6.1.0.tgz", PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"],
        with_dependencies=False,
    )
    resources = [
        orjson.loads(f.read_bytes())
        for folder in ("r4-spec", "hl7.fhir.us.core#6.1.0")
        for f in sorted(Path(EXAMPLES / folder).glob("*.json"))
    ]
    import fhirschema.invariants as invariants

    fast = _invariant_issues(Validator(ctx, invariants=Invariants()), resources)
    for module in (plans, invariants):
        monkeypatch.setattr(module, "compile_subset", lambda expression: None)
        monkeypatch.setattr(module, "guard", lambda expression: None)
    slow = _invariant_issues(Validator(ctx, invariants=Invariants()), resources)
    assert fast == slow


def _both(
    expression: str, node: dict, path: str, monkeypatch: pytest.MonkeyPatch, groups: dict | None = None
) -> tuple[object, object]:
    """(native verdict or None, fhirpathpy verdict) for `expression` on `node` as the resource;
    `groups`: the node's choice groups, as its plan gives them (unknown: choices are fhirpathpy's)."""
    import fhirschema.invariants as invariants

    fast = compile_subset(expression)
    native = fast(node, {"root": node, "resource": node, "groups": groups}) if fast else None
    with monkeypatch.context() as m:
        m.setattr(invariants, "compile_subset", lambda e: None)
        m.setattr(invariants, "guard", lambda e: None)
        slow = Invariants().evaluate(expression, node, resource=node, root=node, path=path).ok
    return native, slow


BDL_7 = (
    "(type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId).isDistinct()"
)
QUE_2 = "descendants().linkId.isDistinct()"
PER_1 = "start.hasValue().not() or end.hasValue().not() or (start <= end)"
OBS_7 = "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()"


def _bundle(kind: str, *entries: tuple[str, str | None]) -> dict:
    def entry(full: str, version: str | None) -> dict:
        res: dict = {"resourceType": "Patient", "id": "p"}
        if version:
            res["meta"] = {"versionId": version}
        return {"fullUrl": full, "resource": res}

    return {"resourceType": "Bundle", "type": kind, "entry": [entry(f, v) for f, v in entries]}


def _questionnaire(*items: dict) -> dict:
    return {"resourceType": "Questionnaire", "status": "draft", "item": list(items)}


def _observation(**extra: object) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **extra}


def _components(codes: list[dict], component_codes: list[dict]) -> dict:
    """An Observation with a value, coded `codes`, and one component coded `component_codes`."""
    return _observation(
        valueString="v", code={"coding": codes}, component=[{"code": {"coding": component_codes}}]
    )


LOINC_A = {"system": "http://loinc.org", "code": "8480-6"}
LOINC_B = {"system": "http://loinc.org", "code": "8462-4"}
NESTED_UNIQUE = {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}
NESTED_REPEATED = {"linkId": "1", "type": "group", "item": [{"linkId": "1", "type": "string"}]}
WITH_EXTENSION = {"linkId": "1", "type": "string", "_text": {"extension": []}}


@pytest.mark.parametrize(
    ("expression", "node", "path", "native_expected"),
    [
        (BDL_7, _bundle("collection", ("urn:a", None), ("urn:b", None)), "Bundle", True),
        (BDL_7, _bundle("collection", ("urn:a", None), ("urn:a", None)), "Bundle", False),
        (BDL_7, _bundle("collection", ("urn:a", "1"), ("urn:a", "2")), "Bundle", True),
        (BDL_7, _bundle("history", ("urn:a", None), ("urn:a", None)), "Bundle", True),
        (QUE_2, _questionnaire(NESTED_UNIQUE), "Questionnaire", True),
        (QUE_2, _questionnaire(NESTED_REPEATED), "Questionnaire", False),
        (QUE_2, _questionnaire(WITH_EXTENSION), "Questionnaire", None),  # primitive extensions: fhirpathpy
        (PER_1, {"start": "2020-01-01", "end": "2020-01-02"}, "Period", True),
        (PER_1, {"start": "2020-01-02", "end": "2020-01-01"}, "Period", False),
        (PER_1, {"start": "2020", "end": "2020-01-01"}, "Period", None),  # precisions differ
        (OBS_7, _observation(), "Observation", True),  # decided by `value.empty()` alone
        (
            OBS_7,
            _observation(valueString="v", component=[{"code": {"text": "y"}}]),
            "Observation",
            None,
        ),  # no groups
        (
            "code.coding.intersect(code.coding).exists()",
            _observation(),
            "Observation",
            None,
        ),  # relative: fhirpathpy
    ],
)
def test_native_subset_cases(
    expression: str, node: dict, path: str, native_expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    native, slow = _both(expression, node, path, monkeypatch)
    assert native is native_expected
    if native is not None:
        assert native == slow


@pytest.mark.parametrize(
    ("codes", "component_codes", "expected"),
    [
        ([LOINC_A], [LOINC_A], False),
        ([LOINC_A], [LOINC_B], True),
        ([LOINC_A, LOINC_B], [{**LOINC_A, "display": "x"}], True),  # every property counts
        ([LOINC_A, LOINC_B], [LOINC_B, LOINC_B], False),
        ([], [LOINC_A], True),
    ],
)
def test_obs_7_intersect_natively(
    codes: list[dict], component_codes: list[dict], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    observation = _components(codes, component_codes)
    native, slow = _both(OBS_7, observation, "Observation", monkeypatch, groups={"value": {"valueString"}})
    assert native is expected
    assert slow is expected


@pytest.mark.parametrize(
    "expression",
    ["(" * 30000 + "1" + ")" * 30000, "name" + ".given" * 50000, "true" + " and true" * 50000],
)
def test_huge_expressions_are_left_to_fhirpathpy(expression: str) -> None:
    # Compiled, the subset's parser and closures recurse in C: past its bounds they must not run.
    assert compile_subset(expression) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(
        st.text(alphabet="0123456789", min_size=10, max_size=12),
        st.text(alphabet="0123456789 -x\u0663", max_size=12),  # others are left to fhirpathpy
    )
)
def test_us_core_17_npi_check_digit_agrees_with_fhirpathpy(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = {"system": "http://hl7.org/fhir/sid/us-npi", "value": value}
    native, slow = _both(US_CORE_17, node, "Identifier", monkeypatch)
    digits = len(value) >= 10 and all(c in "0123456789" for c in value[:10])
    assert native is (slow if digits else None)


def test_us_core_17_on_known_npis(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, ok in (("1234567893", True), ("1234567890", False), ("12345678930", True)):
        assert _both(US_CORE_17, {"value": value}, "Identifier", monkeypatch) == (ok, ok)
    assert _both(US_CORE_17, {"system": "x"}, "Identifier", monkeypatch)[0] is None  # no value
