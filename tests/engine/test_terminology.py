"""Offline terminology: hand-made resources for the rules, the real R4 + THO packages for coverage."""

from __future__ import annotations

from typing import Any

import pytest

from fhirschema.package import load_tgz
from fhirschema.terminology import CodeCheck, Terminology
from tests.conftest import PACKAGES

CORE = "http://hl7.org/fhir"
THO = "http://terminology.hl7.org"
SCT = "http://snomed.info/sct"


# -- hand-made resources -----------------------------------------------------------------------


def _cs(url: str, concepts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "url": url, "content": "complete", "concept": concepts, **extra}


def _vs(url: str, **compose: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "compose": compose}


TREE = _cs(
    "urn:t:tree",
    [
        {
            "code": "animal",
            "display": "Animal",
            "concept": [
                {"code": "dog", "display": "Dog", "designation": [{"value": "Hund"}]},
                {"code": "cat", "display": "Cat", "concept": [{"code": "lion", "display": "Lion"}]},
            ],
        },
        {"code": "plant", "display": "Plant", "property": [{"code": "parent", "valueCode": "animal"}]},
        {"code": "rock", "display": "Rock", "property": [{"code": "kind", "valueCode": "mineral"}]},
    ],
    property=[{"code": "kind", "type": "code"}],
    valueSet="urn:t:vs:tree-all",
)
NOCASE = _cs("urn:t:nocase", [{"code": "ABC", "display": "Abc"}], caseSensitive=False)
FRAGMENT = _cs("urn:t:frag", [{"code": "x"}], content="fragment")


def _f(op: str, value: str, prop: str = "concept") -> dict[str, str]:
    return {"property": prop, "op": op, "value": value}


def _local(*resources: dict[str, Any]) -> Terminology:
    index = {r["url"]: r for r in (TREE, NOCASE, FRAGMENT, *resources)}
    return Terminology(index.get)


def _members(term: Terminology, url: str) -> set[str]:
    exp = term.expansion(url)
    assert exp is not None
    return {code for _, code, _ in exp}


def test_whole_code_system_with_nested_and_property_hierarchy() -> None:
    term = _local(_vs("urn:vs", include=[{"system": "urn:t:tree"}]))
    assert _members(term, "urn:vs") == {"animal", "dog", "cat", "lion", "plant", "rock"}
    assert term.check("urn:vs", "urn:t:tree", "lion") == CodeCheck("member")
    assert term.check("urn:vs", "urn:t:tree", "LION").status == "not-member"  # case-sensitive
    assert term.check("urn:vs", "urn:t:other", "lion").status == "not-member"


def test_filters() -> None:
    def vs(url: str, *filters: dict[str, str]) -> dict[str, Any]:
        return _vs(url, include=[{"system": "urn:t:tree", "filter": list(filters)}])

    term = _local(
        vs("urn:isa", _f("is-a", "animal")),
        vs("urn:desc", _f("descendent-of", "cat")),
        vs("urn:eq", _f("=", "dog")),
        vs("urn:notisa", _f("is-not-a", "animal")),
        vs("urn:prop", _f("=", "mineral", "kind")),
        vs("urn:both", _f("is-a", "animal"), _f("descendent-of", "cat")),
        vs("urn:regex", _f("regex", "[a-z]{3}", "code")),
    )
    # `plant` is below `animal` through its `parent` property, not through nesting.
    assert _members(term, "urn:isa") == {"animal", "dog", "cat", "lion", "plant"}
    assert _members(term, "urn:desc") == {"lion"}
    assert _members(term, "urn:eq") == {"dog"}
    assert _members(term, "urn:notisa") == {"rock"}
    assert _members(term, "urn:prop") == {"rock"}
    assert _members(term, "urn:both") == {"lion"}
    assert _members(term, "urn:regex") == {"dog", "cat"}


def test_unsupported_filter_is_unknown_never_not_member() -> None:
    term = _local(_vs("urn:vs", include=[{"system": "urn:t:tree", "filter": [_f("generalizes", "dog")]}]))
    assert term.expansion("urn:vs") is None
    check = term.check("urn:vs", "urn:t:tree", "nope")
    assert check.status == "unknown"
    assert "generalizes" in check.message


def test_concept_list_and_exclude() -> None:
    term = _local(
        _vs(
            "urn:vs",
            include=[
                {"system": "urn:t:tree", "filter": [_f("is-a", "cat")]},
                {"system": SCT, "concept": [{"code": "123"}]},
            ],
            exclude=[{"system": "urn:t:tree", "concept": [{"code": "cat"}]}],
        )
    )
    assert _members(term, "urn:vs") == {"lion", "123"}
    assert term.check("urn:vs", SCT, "123").status == "member"
    assert term.check("urn:vs", "urn:t:tree", "cat").status == "not-member"


def test_not_loaded_or_incomplete_systems_are_unknown() -> None:
    term = _local(
        _vs("urn:sct", include=[{"system": SCT, "filter": [_f("is-a", "404684003")]}]),
        _vs("urn:frag", include=[{"system": "urn:t:frag"}]),
        _vs("urn:mixed", include=[{"system": "urn:t:tree"}, {"system": SCT}]),
    )
    for url, why in [("urn:sct", SCT), ("urn:frag", "content=fragment"), ("urn:missing", "not loaded")]:
        assert term.expansion(url) is None
        check = term.check(url, None, "whatever")
        assert check.status == "unknown" and why in check.message, check
    # Partial knowledge still confirms members, but never denies.
    assert term.check("urn:mixed", "urn:t:tree", "dog").status == "member"
    assert term.check("urn:mixed", SCT, "1").status == "unknown"


def test_unexpandable_exclude_blocks_member_claims() -> None:
    term = _local(
        _vs(
            "urn:vs",
            include=[{"system": "urn:t:tree"}, {"system": SCT, "concept": [{"code": "1"}]}],
            exclude=[{"system": SCT, "filter": [_f("is-a", "1")]}],
        )
    )
    assert term.check("urn:vs", SCT, "1").status == "unknown"
    # The SNOMED exclude cannot touch codes of another system.
    assert term.check("urn:vs", "urn:t:tree", "dog").status == "member"


def test_value_set_imports_and_intersection() -> None:
    term = _local(
        _vs("urn:cats", include=[{"system": "urn:t:tree", "filter": [_f("is-a", "cat")]}]),
        _vs("urn:dogs", include=[{"system": "urn:t:tree", "concept": [{"code": "dog"}]}]),
        _vs("urn:union", include=[{"valueSet": ["urn:cats"]}, {"valueSet": ["urn:dogs"]}]),
        _vs(
            "urn:inter",
            include=[
                {"system": "urn:t:tree", "filter": [_f("descendent-of", "animal")], "valueSet": ["urn:cats"]}
            ],
        ),
        _vs("urn:cycle-a", include=[{"valueSet": ["urn:cycle-b"]}]),
        _vs("urn:cycle-b", include=[{"valueSet": ["urn:cycle-a"]}]),
    )
    assert _members(term, "urn:union") == {"cat", "lion", "dog"}
    assert _members(term, "urn:inter") == {"cat", "lion"}
    assert term.check("urn:cycle-a", None, "x").status == "unknown"


def test_case_insensitive_system_and_bare_code() -> None:
    term = _local(_vs("urn:vs", include=[{"system": "urn:t:nocase"}, {"system": "urn:t:tree"}]))
    assert term.check("urn:vs", "urn:t:nocase", "abc").status == "member"
    assert term.check("urn:vs", None, "abc").status == "member"
    assert term.check("urn:vs", None, "lion").status == "member"
    assert term.check("urn:vs", None, "tiger").status == "not-member"


def test_display_check() -> None:
    term = _local(
        _vs("urn:vs", include=[{"system": "urn:t:tree"}, {"system": SCT, "concept": [{"code": "1"}]}])
    )
    assert term.check("urn:vs", "urn:t:tree", "dog", "  dog ").display_ok is True
    assert term.check("urn:vs", "urn:t:tree", "dog", "HUND").display_ok is True  # designation
    bad = term.check("urn:vs", "urn:t:tree", "dog", "Wolf")
    assert bad.status == "member" and bad.display_ok is False and "Dog" in bad.message
    assert term.check("urn:vs", SCT, "1", "Anything").display_ok is None  # SNOMED not loaded


def test_stored_expansion_versions_and_implicit_value_set() -> None:
    stored = {
        "resourceType": "ValueSet",
        "url": "urn:exp",
        "version": "2",
        "expansion": {
            "contains": [{"system": "urn:s", "code": "a", "contains": [{"system": "urn:s", "code": "b"}]}]
        },
    }
    term = _local(stored)
    assert _members(term, "urn:exp|2") == {"a", "b"}  # versioned canonical falls back to the url
    # CodeSystem.valueSet of TREE ("urn:t:vs:tree-all") is not a ValueSet resource here.
    term2 = Terminology(lambda url: TREE if url in ("urn:t:tree", "urn:t:vs:tree-all") else None)
    assert term2.check("urn:t:vs:tree-all", "urn:t:tree", "lion").status == "member"


# -- real packages -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> Terminology:
    index: dict[str, dict[str, Any]] = {}
    for name in ("hl7.fhir.r4.core#4.0.1.tgz", "hl7.terminology.r4#7.0.1.tgz"):
        pkg = load_tgz(PACKAGES / name)
        for entry in pkg.entries:
            if entry.resourceType in ("ValueSet", "CodeSystem") and entry.url:
                res = pkg.read(entry)
                index.setdefault(entry.url, res)
                if entry.version:
                    index.setdefault(f"{entry.url}|{entry.version}", res)
    return Terminology(index.get)


def test_administrative_gender(real: Terminology) -> None:
    vs, cs = f"{CORE}/ValueSet/administrative-gender", f"{CORE}/administrative-gender"
    assert real.check(vs, cs, "male") == CodeCheck("member")
    assert real.check(f"{vs}|4.0.1", cs, "female").status == "member"
    assert real.check(vs, cs, "foo").status == "not-member"
    assert real.check(vs, None, "unknown").status == "member"
    assert real.check(vs, cs, "male", "Male").display_ok is True
    assert real.check(vs, cs, "male", "Female").display_ok is False


def test_hierarchical_is_a_with_exclusion(real: Terminology) -> None:
    vs, cs = f"{THO}/ValueSet/v3-ActEncounterCode", f"{THO}/CodeSystem/v3-ActCode"
    members = {code for _, code, _ in real.expansion(vs) or ()}
    assert {"AMB", "EMER", "IMP", "ACUTE", "NONAC"} <= members
    assert "_ActEncounterCode" not in members  # excluded abstract root
    assert real.check(vs, cs, "ACUTE").status == "member"  # nested below IMP
    assert real.check(vs, cs, "_ActEncounterCode").status == "not-member"
    assert real.check(vs, cs, "ACCTRECEIVABLE").status == "not-member"


def test_import_plus_concepts(real: Terminology) -> None:
    vs = f"{CORE}/ValueSet/yesnodontknow"
    assert real.check(vs, f"{THO}/CodeSystem/v2-0136", "Y").status == "member"
    assert real.check(vs, f"{THO}/CodeSystem/data-absent-reason", "asked-unknown").status == "member"
    assert real.check(vs, f"{THO}/CodeSystem/data-absent-reason", "masked").status == "not-member"


def test_is_not_a_real(real: Terminology) -> None:
    vs, cs = f"{CORE}/ValueSet/patient-contactrelationship", f"{THO}/CodeSystem/v2-0131"
    assert real.check(vs, cs, "N").status == "member"
    assert real.check(vs, cs, "O").status == "not-member"


def test_snomed_value_set_is_unknown(real: Terminology) -> None:
    vs = f"{CORE}/ValueSet/clinical-findings"
    assert real.expansion(vs) is None
    check = real.check(vs, SCT, "404684003")
    assert check.status == "unknown" and SCT in check.message


def test_languages_concept_list_for_unloaded_system(real: Terminology) -> None:
    vs = f"{CORE}/ValueSet/languages"
    exp = real.expansion(vs)
    assert exp is not None and len(exp) > 50
    assert real.check(vs, "urn:ietf:bcp:47", "en-US").status == "member"
    assert real.check(vs, "urn:ietf:bcp:47", "xx-YY").status == "not-member"


def test_accepts_a_schema_source() -> None:
    class Source:
        def resource(self, url: str) -> dict[str, Any] | None:
            return {"urn:t:tree": TREE, "urn:vs": _vs("urn:vs", include=[{"system": "urn:t:tree"}])}.get(url)

    assert Terminology(Source()).check("urn:vs", "urn:t:tree", "dog").status == "member"
