"""FHIRPath invariants: real R4 core / US Core / IPS constraints on real example data."""

from __future__ import annotations

import copy
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from fhirschema.invariants import InvariantResult, Invariants
from fhirschema.package import load_tgz
from tests.conftest import EXAMPLES, PACKAGES

R4 = EXAMPLES / "r4-spec"
CONSTRAINT_PACKAGES = (
    "hl7.fhir.r4.core#4.0.1.tgz",
    "hl7.fhir.us.core#6.1.0.tgz",
    "hl7.fhir.uv.ips#2.0.0.tgz",
)


def _load(path: Path) -> dict:
    return orjson.loads(path.read_bytes())


@pytest.fixture(scope="module")
def inv() -> Invariants:
    return Invariants()


@pytest.fixture(scope="module")
def constraints() -> dict[str, dict[str, str]]:
    """Every constraint expression of the packages' snapshots: expression → {key, path}."""
    found: dict[str, dict[str, str]] = {}
    for name in CONSTRAINT_PACKAGES:
        for sd in load_tgz(PACKAGES / name).resources("StructureDefinition"):
            for element in (sd.get("snapshot") or {}).get("element", []):
                for con in element.get("constraint") or ():
                    if con.get("expression"):
                        found.setdefault(con["expression"], {"key": con["key"], "path": element["path"]})
    return found


@pytest.fixture(scope="module")
def r4_expr(constraints: dict[str, dict[str, str]]) -> dict[str, str]:
    """R4 core constraint key → expression (keys like pat-1 are unique in core)."""
    return {v["key"]: expr for expr, v in constraints.items() if not v["key"].startswith("us-core")}


def test_every_package_constraint_compiles(inv: Invariants, constraints: dict) -> None:
    failures = {}
    for expression, where in constraints.items():
        compiled = inv.compile(expression)
        if compiled.ast is None:
            failures[f"{where['key']} ({where['path']})"] = compiled.error
    assert len(constraints) > 220
    assert failures == {}


def test_compiled_expressions_are_cached(inv: Invariants) -> None:
    assert inv.compile("name.exists()") is inv.compile("name.exists()")


def test_pat1_on_real_patient_contact(inv: Invariants, r4_expr: dict) -> None:
    patient = _load(R4 / "Patient-example.json")
    contact = patient["contact"][0]
    ok = inv.evaluate(r4_expr["pat-1"], contact, resource=patient, path="Patient.contact")
    assert ok == InvariantResult(True)
    bare = {"relationship": contact["relationship"], "gender": "female"}
    assert inv.evaluate(r4_expr["pat-1"], bare, resource=patient, path="Patient.contact").ok is False
    # Without a path the node is still evaluated (typed as a plain Element).
    assert inv.evaluate(r4_expr["pat-1"], bare, resource=patient).ok is False


def test_dom6_narrative(inv: Invariants, r4_expr: dict) -> None:
    patient = _load(R4 / "Patient-example.json")
    assert inv.evaluate(r4_expr["dom-6"], patient, resource=patient).ok is True
    no_text = {k: v for k, v in patient.items() if k != "text"}
    assert inv.evaluate(r4_expr["dom-6"], no_text, resource=no_text).ok is False


def test_dom3_contained_must_be_referenced(inv: Invariants, r4_expr: dict) -> None:
    plan = _load(R4 / "CarePlan-example.json")  # contains p1, referenced as "#p1"
    assert inv.evaluate(r4_expr["dom-3"], plan, resource=plan).ok is True
    orphan = copy.deepcopy(plan)
    orphan["contained"].append({"resourceType": "Patient", "id": "nobody"})
    assert inv.evaluate(r4_expr["dom-3"], orphan, resource=orphan).ok is False


def test_ele1_and_ext1(inv: Invariants, r4_expr: dict) -> None:
    patient = _load(R4 / "Patient-example.json")
    name = patient["name"][0]
    assert inv.evaluate(r4_expr["ele-1"], name, resource=patient, path="Patient.name").ok is True
    assert inv.evaluate(r4_expr["ele-1"], {"id": "x"}, resource=patient, path="HumanName").ok is False
    ext = {"url": "http://example.org/e", "valueString": "v"}
    assert inv.evaluate(r4_expr["ext-1"], ext, resource=patient, path="Patient.extension").ok is True
    both = {**ext, "extension": [ext]}
    assert inv.evaluate(r4_expr["ext-1"], both, resource=patient, path="Patient.extension").ok is False


def test_bdl3_uses_percent_resource(inv: Invariants, r4_expr: dict) -> None:
    bundle = _load(R4 / "Bundle-bundle-example.json")  # a searchset: entries carry no request
    assert bundle["type"] == "searchset"
    assert inv.evaluate(r4_expr["bdl-3"], bundle, resource=bundle).ok is True
    transaction = {**bundle, "type": "transaction"}
    assert inv.evaluate(r4_expr["bdl-3"], transaction, resource=transaction).ok is False
    # The focus is an entry, %resource is the Bundle: the variable, not the focus, decides.
    expr = "request.exists() = (%resource.type = 'transaction')"
    entry = bundle["entry"][0]
    assert inv.evaluate(expr, entry, resource=transaction, path="Bundle.entry").ok is False
    assert inv.evaluate(expr, entry, resource=bundle, path="Bundle.entry").ok is True


def test_ref1_uses_percent_root_resource(inv: Invariants, r4_expr: dict) -> None:
    plan = _load(R4 / "CarePlan-example.json")
    ref = {"reference": "#p1"}
    assert inv.evaluate(r4_expr["ref-1"], ref, resource=plan, path="Reference").ok is True
    bad = {"reference": "#missing"}
    assert inv.evaluate(r4_expr["ref-1"], bad, resource=plan, path="Reference").ok is False
    # %rootResource defaults to %resource but can be the outer Bundle.
    outer = {"resourceType": "Bundle", "contained": [{"resourceType": "Basic", "id": "missing"}]}
    assert inv.evaluate(r4_expr["ref-1"], bad, resource=plan, root=outer, path="Reference").ok


def test_per1_has_value_and_date_comparison(inv: Invariants, r4_expr: dict) -> None:
    patient = _load(R4 / "Patient-example.json")
    good = {"start": "2012-01-01", "end": "2013-01-01"}
    backwards = {"start": "2014-01-01", "end": "2013-01-01"}
    assert inv.evaluate(r4_expr["per-1"], good, resource=patient, path="Period").ok is True
    assert inv.evaluate(r4_expr["per-1"], backwards, resource=patient, path="Period").ok is False
    only_ext = {"_start": {"extension": [{"url": "u", "valueString": "x"}]}, "end": "2013"}
    assert inv.evaluate(r4_expr["per-1"], only_ext, resource=patient, path="Period").ok is True


def test_us_core_invariants(inv: Invariants, constraints: dict) -> None:
    by_key = {v["key"]: e for e, v in constraints.items() if v["key"].startswith("us-core")}
    us = EXAMPLES / "hl7.fhir.us.core#6.1.0"
    patient = _load(us / "Patient-example.json")
    name = patient["name"][0]
    assert inv.evaluate(by_key["us-core-6"], name, resource=patient, path="Patient.name").ok is True
    empty_name = {"use": "official"}
    assert inv.evaluate(by_key["us-core-6"], empty_name, resource=patient, path="Patient.name").ok is False
    # us-core-13 combines References with `or`: FHIRPath singleton evaluation makes them true.
    role = {"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/1"}}
    assert inv.evaluate(by_key["us-core-13"], role, resource=role).ok is True


def test_fhir_functions(inv: Invariants) -> None:
    patient = _load(R4 / "Patient-example.json")
    plan = _load(R4 / "CarePlan-example.json")

    def ev(expr: str, node: object = patient, res: dict = patient) -> bool | None:
        return inv.evaluate(expr, node, resource=res).ok

    assert ev("text.`div`.htmlChecks()") is True  # `div` is a FHIRPath keyword
    assert ev("conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')") is True
    assert ev("gender.memberOf('http://hl7.org/fhir/ValueSet/administrative-gender')") is True
    assert ev("birthDate.getValue() = @1974-12-25") is True
    # Only contained and same-Bundle references resolve; an external one is empty.
    assert ev("managingOrganization.resolve().empty()") is True
    assert ev("managingOrganization.resolve() is Organization") is True  # empty → holds
    assert ev("activity.detail.performer.resolve() is Practitioner", plan, plan) is True
    assert ev("activity.detail.performer.resolve().id = 'p1'", plan, plan) is True
    assert ev("name.given.trace('g').count() > 2") is True  # trace() must not print


def test_result_shapes(inv: Invariants) -> None:
    patient = _load(R4 / "Patient-example.json")
    assert inv.evaluate("deceased.exists() and false", patient, resource=patient).ok is False
    assert inv.evaluate("nothing.here", patient, resource=patient) == InvariantResult(True)
    assert inv.evaluate("gender", patient, resource=patient).ok is True  # singleton → true
    many = inv.evaluate("name.given", patient, resource=patient)
    assert many.ok is None and "items" in many.message
    # A primitive focus: constraints on a string element.
    assert inv.evaluate("$this.length() < 5", "abc", resource=patient).ok is True
    assert inv.evaluate("$this.matches('^[0-9]+$')", "12a", resource=patient).ok is False


@pytest.mark.parametrize(
    "expression",
    [
        "name.where(",  # syntax error fhirpathpy's own parser accepts silently
        "name given",  # trailing garbage
        "name.frobnicate()",  # unknown function
        "name.given.substring('x')",  # argument of the wrong type
        "1 + 'a' > name",  # type error at run time
        "(" * 3000 + "1" + ")" * 3000,  # deep nesting
        "%undefinedVariable.exists()",
    ],
)
def test_pathological_expressions_do_not_crash(inv: Invariants, expression: str) -> None:
    patient = _load(R4 / "Patient-example.json")
    result = inv.evaluate(expression, patient, resource=patient)
    assert result.ok is None
    assert result.message


def test_throughput_patient_constraints(inv: Invariants) -> None:
    """All R4 Patient constraints (ele-1 aside: enforced structurally) on a real Patient."""
    patient = _load(R4 / "Patient-example.json")
    core = load_tgz(PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz")
    sd = next(s for s in core.resources("StructureDefinition") if s.get("id") == "Patient")
    work: list[tuple[str, object, str]] = []
    for element in sd["snapshot"]["element"]:
        for con in element.get("constraint") or ():
            if con["key"] == "ele-1" or not con.get("expression"):
                continue
            for node in _nodes(patient, element["path"].split(".")[1:]):
                work.append((con["expression"], node, element["path"]))
    outcomes = Counter(inv.evaluate(e, n, resource=patient, path=p).ok for e, n, p in work)
    assert outcomes == Counter({True: len(work)})
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        for expression, node, path in work:
            inv.evaluate(expression, node, resource=patient, path=path)
    rate = rounds * len(work) / (time.perf_counter() - start)
    print(f"\n{len(work)} Patient invariant evaluations per resource, {rate:,.0f} evaluations/s")
    assert rate > 1000  # ~15k/s measured; a floor that only catches a pathological slowdown


def _nodes(data: object, parts: list[str]) -> list:
    """Values at an element path (no choice types: Patient's constrained paths have none)."""
    if isinstance(data, list):
        return [n for item in data for n in _nodes(item, parts)]
    if not parts:
        return [data]
    if not isinstance(data, dict) or parts[0] not in data:
        return []
    return _nodes(data[parts[0]], parts[1:])
