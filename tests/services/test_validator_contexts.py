"""The validator replica's one cache, without servers: which packages a context holds (the CLI's
closure, by construction), and the one invalidation rule."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from validator_service.bootstrap import make_validator
from validator_service.contexts import Contexts, Materialised, UnknownPackage

from fhirschema.context import FhirContext
from fhirschema.package import Package, load_tgz
from fhirschema_bus.contracts import ValidateOptions
from tests.conftest import PACKAGES

CORE = "hl7.fhir.r4.core#4.0.1"
ALL = sorted(p.name for p in PACKAGES.glob("*.tgz"))


@cache
def package(file: str) -> Package:
    return load_tgz(PACKAGES / file)


def held(*files: str, uploads: tuple[dict, ...] = (), revision: int = 0) -> Materialised:
    pkgs = {package(f).id: package(f) for f in files}
    return Materialised(
        packages=pkgs,
        digests={p: f"sha-{p}" for p in pkgs},
        core=CORE,
        uploads=uploads,
        uploads_revision=revision,
    )


def contexts(have: Materialised) -> Contexts:
    c = Contexts(make_validator)
    c.replace(have)
    return c


@pytest.mark.parametrize(
    "spec", ["hl7.fhir.us.core#6.1.0", "hl7.fhir.uv.ips#2.0.0", "ch.fhir.ig.ch-lab-order#1.0.0"]
)
def test_a_named_context_holds_what_the_cli_loads(spec: str, tmp_path: Path) -> None:
    from fhirschema.cache import PackageCache

    cli = FhirContext.from_specs([PACKAGES / f"{spec}.tgz"], cache=PackageCache(tmp_path))
    ours, warnings = contexts(held(*ALL)).closure((spec,))
    assert [p.id for p in ours] == [p.id for p in cli.packages]
    assert len(warnings) == len([w for w in cli.warnings if "dependency" in w])


def test_the_default_context_is_every_package_core_first_newest_first() -> None:
    c = contexts(held(*ALL))
    ids = [p.id for p in c.closure(())[0]]
    assert ids[0] == CORE and set(ids) == {package(f).id for f in ALL}
    assert ids.index("hl7.fhir.us.core#6.1.0") == ids.index("hl7.fhir.us.core#3.1.1") - 1
    patient = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
    fhir = c.context().fhir
    assert fhir.resource(patient)["version"] == "6.1.0"  # unversioned: the newest
    assert fhir.resource(f"{patient}|3.1.1")["version"] == "3.1.1"


def test_an_unknown_package_is_an_error_not_a_context() -> None:
    c = contexts(held("hl7.fhir.r4.core#4.0.1.tgz"))
    with pytest.raises(UnknownPackage, match=re.escape("hl7.fhir.us.core#6.1.0 is not in the repository")):
        c.validator(["hl7.fhir.us.core#6.1.0"], [], ValidateOptions())


def test_contexts_are_dropped_only_when_what_they_hold_changed() -> None:
    c = contexts(held("hl7.fhir.r4.core#4.0.1.tgz", "hl7.fhir.us.core#3.1.1.tgz"))
    default = c.context()
    us_core = c.context(("hl7.fhir.us.core#3.1.1",))
    v = c.validator([], [], ValidateOptions())
    # Another package registered: the default context holds every package, so it goes; the
    # named one does not depend on it and stays (with its validators).
    assert c.replace(
        held("hl7.fhir.r4.core#4.0.1.tgz", "hl7.fhir.us.core#3.1.1.tgz", "hl7.fhir.uv.ips#2.0.0.tgz")
    ) == [()]
    assert c.context(("hl7.fhir.us.core#3.1.1",)) is us_core and c.context() is not default
    assert c.validator([], [], ValidateOptions()) is not v
    # Uploads go into every context: a new revision drops them all.
    upload = {"url": "http://example.org/p", "type": "Patient", "derivation": "constraint", "elements": {}}
    have = held("hl7.fhir.r4.core#4.0.1.tgz", "hl7.fhir.us.core#3.1.1.tgz", "hl7.fhir.uv.ips#2.0.0.tgz",
                uploads=(upload,), revision=1)  # fmt: skip
    assert set(c.replace(have)) == {(), ("hl7.fhir.us.core#3.1.1",)}
    assert c.context().fhir.schema("http://example.org/p") == upload
