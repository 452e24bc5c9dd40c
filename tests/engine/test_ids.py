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


def test_registry_version_rules() -> None:
    from fhirschema.ids import is_wildcard, newest, newest_matching, patch_wildcard

    listed = ["6.1.0-snapshot1", "6.0.0", "6.1.0", "5.0.1", "5.0.0", "3.1.1", "7.0.0-ballot"]
    assert newest(listed) == "6.1.0"  # stable above pre-releases, whatever the upload order
    assert newest(["7.0.0-ballot", "7.0.0-ballot2"]) == "7.0.0-ballot2"
    assert newest([]) is None
    assert newest_matching("5.0.x", listed) == "5.0.1"
    assert newest_matching("6.1.x", listed) == "6.1.0"  # 6.1.0-snapshot1 never matches
    assert newest_matching("4.0.x", listed) is None
    assert newest_matching("5.0.x", ["5.0.10", "5.0.9"]) == "5.0.10"
    for bad in ("x.x", "1.x", "1.x.x", "x.y.x"):
        with pytest.raises(ValueError, match="patch wildcard"):
            newest_matching(bad, listed)
    assert is_wildcard("1.2.x") and is_wildcard("x.x") and not is_wildcard("1.2.3")
    assert patch_wildcard("5.0.0") == "5.0.x" and patch_wildcard("5.0.0-ballot") is None
    assert PackageId.parse("hl7.fhir.uv.x#current$main").version == "current$main"
