"""The shared identities: package ids and canonical references."""

from __future__ import annotations

import pytest

from fhirschema.ids import CORE_SD, Canonical, PackageId, canonical_url, is_type_name, version_key


def test_package_id_reads_both_separators_and_prints_one() -> None:
    assert PackageId.parse("hl7.fhir.us.core@6.1.0") == PackageId.parse("hl7.fhir.us.core#6.1.0")
    assert str(PackageId("hl7.fhir.r4.core", "4.0.1")) == "hl7.fhir.r4.core#4.0.1"
    assert PackageId.split("hl7.fhir.r4.core") == ("hl7.fhir.r4.core", None)


@pytest.mark.parametrize("bad", ["", "#1.0.0", "x#", "../etc#1.0.0", "a/b#1.0.0", "x#1/../2", "x#.."])
def test_package_id_rejects_what_is_not_one(bad: str) -> None:
    with pytest.raises(ValueError):
        PackageId.parse(bad)


def test_package_id_layout_in_s3() -> None:
    pid = PackageId.parse("hl7.fhir.r4.core#4.0.1")
    assert pid.tgz_key == "hl7.fhir.r4.core/hl7.fhir.r4.core#4.0.1.tgz"
    assert pid.prefix == "hl7.fhir.r4.core/4.0.1/"


def test_versions_order_as_semver() -> None:
    versions = ["1.0.0", "1.0.0-ballot", "0.9.10", "0.9.2", "10.0.0", "2.0.0-cibuild"]
    assert sorted(versions, key=version_key) == [
        "0.9.2", "0.9.10", "1.0.0-ballot", "1.0.0", "2.0.0-cibuild", "10.0.0",
    ]  # fmt: skip
    assert version_key(None) < version_key("0.0.1")
    ids = [PackageId("a", "1.10.0"), PackageId("a", "1.9.0")]
    assert sorted(ids) == ids[::-1]


def test_core_type_names_vs_canonical_urls() -> None:
    assert is_type_name("Patient") and not is_type_name("http://x.org/y")
    assert canonical_url("Patient") == CORE_SD + "Patient"
    assert canonical_url("urn:uuid:1") == "urn:uuid:1"
    assert Canonical.parse("http://x.org/P|1.0") == Canonical("http://x.org/P", "1.0")
    assert str(Canonical.parse("Patient")) == CORE_SD + "Patient"
    assert str(Canonical.parse("http://x.org/P|")) == "http://x.org/P"
