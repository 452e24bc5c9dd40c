"""Drive ../shared/fhirschema/cases/validator/*.yaml (format: cases/README.md) through our Validator."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from fhirschema.context import FhirContext
from fhirschema.terminology import CodeCheck
from fhirschema.validator import ValidationResult, Validator
from tests.conftest import CASES, PACKAGES

VALIDATOR_CASES = CASES / "validator"
US_CORE = "hl7.fhir.us.core#6.1.0"


@dataclass
class Case:
    suite: str
    file: Path
    desc: str
    test: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.file.stem}: {self.desc}"


def load_cases() -> list[Case]:
    cases = []
    for file in sorted(VALIDATOR_CASES.glob("*.yaml")):
        suite = yaml.safe_load(file.read_text())
        for test in suite.get("tests") or []:
            cases.append(
                Case(
                    suite.get("suite", file.stem),
                    file,
                    str(test.get("desc")),
                    test,
                    suite.get("defaults") or {},
                )
            )
    return cases


@cache
def r4_context(with_us_core: bool) -> FhirContext:
    specs = [PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"]
    if with_us_core:
        specs.insert(0, PACKAGES / f"{US_CORE}.tgz")
    return FhirContext.from_specs(specs, with_dependencies=with_us_core)


class CaseSource:
    """Registry schemas by url and by name, then (when the suite asks) R4 core and packages."""

    def __init__(self, registry: list[dict[str, Any]], base: FhirContext | None) -> None:
        self.base = base
        self.by_ref: dict[str, dict[str, Any]] = {}
        for schema in registry:
            for key in ("url", "name"):
                if schema.get(key):
                    self.by_ref.setdefault(schema[key], schema)
            if schema.get("type") and schema.get("derivation") != "constraint" and not schema.get("base"):
                self.by_ref.setdefault(schema["type"], schema)

    def schema(self, ref: str) -> dict[str, Any] | None:
        found = self.by_ref.get(ref)
        if found is None and self.base is not None:
            found = self.base.schema(ref)
        return found

    def resource(self, url: str) -> dict[str, Any] | None:
        return self.base.resource(url) if self.base is not None else None


class ColorsTerminology:
    """The suite's test terminology: `urn:vs:colors` = {red, green, blue}."""

    def check(self, value_set: str, system: str | None, code: str, display: str | None = None) -> CodeCheck:
        if value_set == "urn:vs:colors":
            return CodeCheck("member" if code in ("red", "green", "blue") else "not-member")
        return CodeCheck("unknown", message="test terminology knows only urn:vs:colors")


class KnownReferences:
    known = frozenset(("Patient/1", "Patient/2", "Organization/org1"))

    def exists(self, reference: str) -> bool | None:
        return reference in self.known


def run_case(case: Case) -> ValidationResult:
    test, defaults = case.test, case.defaults
    use = {**defaults, **{k: v for k, v in test.items() if k.startswith("use") or k.startswith("_use")}}
    packages = use.get("usePackages") or use.get("_usePackages") or []
    with_us_core = any("us.core" in p for p in packages)
    base = r4_context(with_us_core) if use.get("useR4") or packages else None
    source = CaseSource(copy.deepcopy(test.get("registry") or []), base)
    invariants = None
    if use.get("useFhirpath"):
        from fhirschema.invariants import Invariants

        invariants = _invariants()
        del Invariants
    validator = Validator(
        source,
        invariants=invariants,
        terminology=ColorsTerminology() if use.get("useTerminology") else None,
        strict=bool((test.get("options") or {}).get("strict")),
        references=KnownReferences() if use.get("useReferenceResolver") else None,
        overlays=copy.deepcopy(test.get("schemas") or []),
    )
    profiles = [test["_applyProfileUrl"]] if test.get("_applyProfileUrl") else []
    return validator.validate(copy.deepcopy(test.get("data")), profiles)


@cache
def _invariants() -> Any:
    from fhirschema.invariants import Invariants

    return Invariants()


def verdict(case: Case, result: ValidationResult) -> list[str]:
    """Why the result does not satisfy the case (empty when it passes)."""
    test = case.test
    problems = []
    expected = test.get("issues") or []
    for exp in expected:
        path = list(exp.get("path") or [])
        hit = [i for i in result.issues if i.code == exp["code"] and i.path == path]
        if exp.get("severity"):
            hit = [i for i in hit if i.severity == exp["severity"]]
        if not hit:
            problems.append(f"missing {exp['code']} at {path}")
    for issue in result.errors():
        if not any(issue.code == e["code"] and issue.path == list(e.get("path") or []) for e in expected):
            problems.append(f"unexpected {issue.code} at {issue.path}: {issue.message}")
    if test.get("valid") is False and result.valid:
        problems.append("expected invalid, got valid")
    return problems


# YAML 1.1 reads `-62e+3` as a string; the cases (written for a YAML 1.2 reader) mean a number.
yaml.SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    __import__("re").compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
