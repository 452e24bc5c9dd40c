"""`fhirschema convert` and `fhirschema packages`, run as the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CASES, PACKAGES

GOLDEN = CASES / "translator" / "golden"


def fhirschema(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fhirschema.cli", *args],
        capture_output=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_convert_files_to_ndjson():
    result = fhirschema("convert", str(GOLDEN / "patient.sd.json"), str(GOLDEN / "address.sd.json"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["Patient", "Address"]


def test_convert_stdin():
    result = fhirschema("convert", "-", stdin=(GOLDEN / "string.sd.json").read_bytes())
    assert result.returncode == 0
    assert json.loads(result.stdout)["kind"] == "primitive-type"


def test_convert_package_every_structure_definition():
    result = fhirschema("convert", "--package", str(PACKAGES / "hl7.fhir.us.core#6.1.0.tgz"))
    assert result.returncode == 0, result.stderr
    schemas = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(schemas) == 59
    assert all(s["package_id"] == "hl7.fhir.us.core#6.1.0" for s in schemas)


def test_bad_inputs_continue_and_exit_1(tmp_path: Path):
    (tmp_path / "notjson.json").write_text("{oops")
    (tmp_path / "patient.json").write_text('{"resourceType": "Patient"}')
    result = fhirschema(
        "convert",
        str(tmp_path / "notjson.json"),
        str(tmp_path / "patient.json"),
        str(tmp_path / "missing.json"),
        str(GOLDEN / "boolean.sd.json"),
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "notjson.json: not JSON" in err
    assert "patient.json: not a StructureDefinition" in err
    assert "missing.json: no such file" in err
    assert json.loads(result.stdout)["name"] == "boolean"  # the good one still converted


def test_corrupt_package(tmp_path: Path):
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    result = fhirschema("convert", "--package", str(broken))
    assert result.returncode == 1
    assert "broken.tgz" in result.stderr.decode() and "tarball" in result.stderr.decode()


def test_usage_errors_exit_2():
    assert fhirschema("convert").returncode == 2
    assert fhirschema("convert", "--bogus").returncode == 2
    assert fhirschema("nosuchcommand").returncode == 2


def test_packages_install_list_and_convert_from_cache(tmp_path: Path):
    env = {"FHIR_PACKAGE_CACHE": str(tmp_path)}
    installed = fhirschema("packages", "install", str(PACKAGES / "hl7.fhir.us.core#3.1.1.tgz"), env=env)
    assert installed.returncode == 0, installed.stderr
    listed = fhirschema("packages", "list", env=env)
    assert listed.stdout.decode().split() == ["hl7.fhir.us.core#3.1.1"]
    converted = fhirschema("convert", "-p", "hl7.fhir.us.core@3.1.1", env=env)
    assert converted.returncode == 0
    assert len(converted.stdout.splitlines()) == 30
    missing = fhirschema("convert", "-p", "hl7.fhir.us.core#1.0.0", env=env)
    assert missing.returncode == 1 and b"packages install" in missing.stderr
