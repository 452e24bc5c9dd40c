"""The package loader, cache and context on the real packages in ../shared/fhir/packages."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import orjson
import pytest

from fhirschema.cache import PackageCache
from fhirschema.context import FhirContext
from fhirschema.converter import convert
from fhirschema.ids import PackageId
from fhirschema.package import PackageError, load_package, load_tgz, parse_dependencies
from tests.conftest import PACKAGES

R4 = PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"
US_CORE_6 = PACKAGES / "hl7.fhir.us.core#6.1.0.tgz"
TERMINOLOGY = PACKAGES / "hl7.terminology.r4#7.0.1.tgz"


@pytest.fixture(scope="module")
def r4():
    return load_tgz(R4)


def _tgz(tmp_path: Path, files: dict[str, bytes], name: str = "p.tgz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


MANIFEST = json.dumps({"name": "test.pkg", "version": "1.0.0", "dependencies": {}}).encode()


def test_r4_core_indexes_without_parsing(r4):
    assert (r4.name, r4.version) == ("hl7.fhir.r4.core", "4.0.1")
    assert len(r4.entries) == 4581
    assert r4._parsed == {}  # nothing parsed up front
    sds = [e for e in r4.entries if e.resourceType == "StructureDefinition"]
    assert len(sds) == 658
    patient = next(e for e in sds if e.url == "http://hl7.org/fhir/StructureDefinition/Patient")
    assert r4.read(patient)["type"] == "Patient"
    assert len(r4._parsed) == 1


def test_index_versions_and_missing_index():
    us6 = load_tgz(US_CORE_6)  # index-version 2
    assert any(
        e.url == "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient" for e in us6.entries
    )
    # examples live in package/example/ and are indexed too
    assert any(e.filename.startswith("example/") for e in us6.entries)
    tho = load_tgz(TERMINOLOGY)  # no .index.json: built by scanning
    assert len(tho.entries) > 3000
    assert all(e.resourceType for e in tho.entries)


def test_index_version_0_with_filepath(tmp_path):
    index = {"index-version": 0, "date": "2020", "files": [
        {"filename": "a.json", "filepath": "package/a.json", "resourceType": "ValueSet", "url": "http://x/vs", "fhirVersion": "4.0.1"}
    ]}  # fmt: skip
    path = _tgz(tmp_path, {
        "package/package.json": MANIFEST,
        "package/.index.json": json.dumps(index).encode(),
        "package/a.json": b'{"resourceType": "ValueSet", "url": "http://x/vs"}',
    })  # fmt: skip
    pkg = load_tgz(path)
    assert [e.url for e in pkg.entries] == ["http://x/vs"]


def test_all_real_packages_load_and_convert_deterministically():
    for name in ("hl7.fhir.r4.core#4.0.1", "hl7.fhir.us.core#3.1.1", "hl7.fhir.us.core#6.1.0",
                 "hl7.fhir.uv.ips#2.0.0", "hl7.fhir.uv.ipa#1.1.0", "hl7.fhir.uv.extensions.r4#5.2.0"):  # fmt: skip
        pkg = load_tgz(PACKAGES / f"{name}.tgz")
        sds = list(pkg.resources("StructureDefinition"))
        assert sds, name
        first = [orjson.dumps(convert(sd)) for sd in sds]
        assert first == [orjson.dumps(convert(sd)) for sd in sds], name
        assert pkg.warnings == []


def test_smart_app_launch_tiny_package():
    pkg = load_tgz(PACKAGES / "hl7.fhir.uv.smart-app-launch#2.0.0.tgz")
    assert pkg.name == "hl7.fhir.uv.smart-app-launch"
    assert len(pkg.entries) <= 3


def test_dependencies_with_npm_alias():
    raw = {"hl7.fhir.r4.core": "4.0.1", "v610@npm:hl7.fhir.us.core": "6.1.0", "x": "npm:other.pkg@2.0.0"}
    assert parse_dependencies(raw) == {
        "hl7.fhir.r4.core": "4.0.1",
        "hl7.fhir.us.core": "6.1.0",
        "other.pkg": "2.0.0",
    }
    assert (
        PackageId.split("hl7.fhir.us.core@6.1.0")
        == PackageId.split("hl7.fhir.us.core#6.1.0")
        == ("hl7.fhir.us.core", "6.1.0")
    )


def test_context_resolves_closure_and_warns_on_missing(tmp_path):
    ctx = FhirContext.from_specs([US_CORE_6], cache=PackageCache(tmp_path))
    names = {p.name for p in ctx.packages}
    assert {"hl7.fhir.us.core", "hl7.fhir.r4.core", "hl7.terminology.r4"} <= names
    assert any("us.nlm.vsac" in w for w in ctx.warnings)
    assert ctx.schema("Patient")["url"] == "http://hl7.org/fhir/StructureDefinition/Patient"
    url = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
    assert ctx.resource(f"{url}|6.1.0")["version"] == "6.1.0"
    assert ctx.schema(url)["base"] == "http://hl7.org/fhir/StructureDefinition/Patient"
    assert ctx.resource("http://hl7.org/fhir/ValueSet/administrative-gender")["resourceType"] == "ValueSet"


def test_truncated_tgz_names_the_package(tmp_path):
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(US_CORE_6.read_bytes()[:50_000])
    with pytest.raises(PackageError, match=r"broken\.tgz"):
        load_tgz(broken)


def test_missing_package_json(tmp_path):
    path = _tgz(tmp_path, {"package/a.json": b"{}"})
    with pytest.raises(PackageError, match=r"package\.json is missing"):
        load_tgz(path)


def test_bad_entry_does_not_stop_the_rest(tmp_path):
    path = _tgz(tmp_path, {
        "package/package.json": MANIFEST,
        "package/good.json": b'{"resourceType": "ValueSet", "url": "http://x/good"}',
        "package/bad.json": b'{"resourceType": "ValueSet", "url": ',
        "package/other/skip.json": b'{"resourceType": "ValueSet", "url": "http://x/other"}',
        "package/notes.txt": b"hello",
    })  # fmt: skip
    pkg = load_tgz(path)
    assert [e.url for e in pkg.entries] == ["http://x/good"]
    assert any("bad.json" in w and "test.pkg#1.0.0" in w for w in pkg.warnings)


def test_cache_install_and_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_PACKAGE_CACHE", str(tmp_path / "cache"))
    cache = PackageCache()
    assert cache.root == tmp_path / "cache"
    cache.install(PACKAGES / "hl7.fhir.us.core#3.1.1.tgz")
    assert (tmp_path / "cache" / "hl7.fhir.us.core#3.1.1" / "package" / "package.json").is_file()
    assert cache.list() == [("hl7.fhir.us.core", "3.1.1")]
    for spec in ("hl7.fhir.us.core#3.1.1", "hl7.fhir.us.core@3.1.1", "hl7.fhir.us.core"):
        pkg = load_package(spec)
        assert pkg.version == "3.1.1"
        assert any(e.url and e.url.endswith("us-core-patient") for e in pkg.entries)
    with pytest.raises(PackageError, match="not in the package cache"):
        load_package("hl7.fhir.us.core#9.9.9")
