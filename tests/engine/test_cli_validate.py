"""`fhirschema validate`: the fixed CLI contract (names, NDJSON shape, exit codes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, PACKAGES
from tests.engine.test_cli_convert import fhirschema

R4 = str(PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz")
PATIENT = EXAMPLES / "r4-spec" / "Patient-example.json"


def lines(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_valid_resource_exit_0():
    result = fhirschema("validate", "--package", R4, str(PATIENT))
    assert result.returncode == 0, result.stderr
    [line] = lines(result.stdout)
    assert line["source"] == str(PATIENT)
    assert line["valid"] is True
    assert line["outcome"]["resourceType"] == "OperationOutcome"


def test_invalid_resource_exit_1(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"resourceType": "Patient", "gender": "unknown-gender", "birthDate": "2020-13-01"})
    )
    result = fhirschema("validate", "-p", R4, "--no-invariants", str(bad))
    assert result.returncode == 1
    [line] = lines(result.stdout)
    assert line["valid"] is False
    codes = {i["details"]["coding"][0]["code"] for i in line["outcome"]["issue"]}
    assert {"fs107", "fs501"} <= codes
    expressions = {e for i in line["outcome"]["issue"] for e in i["expression"]}
    assert "Patient.birthDate" in expressions


def test_ndjson_and_stdin_sources(tmp_path: Path):
    ndjson = tmp_path / "many.ndjson"
    ndjson.write_text(
        '{"resourceType": "Patient", "active": true}\n\n{"resourceType": "Patient", "active": "yes"}\n'
    )
    result = fhirschema("validate", "-p", R4, "--no-invariants", str(ndjson))
    assert result.returncode == 1
    assert [(x["source"], x["valid"]) for x in lines(result.stdout)] == [
        (f"{ndjson}:1", True),
        (f"{ndjson}:3", False),
    ]
    piped = fhirschema("validate", "-p", R4, "-", stdin=PATIENT.read_bytes())
    assert piped.returncode == 0 and lines(piped.stdout)[0]["source"] == "-"


def test_profile_and_supporting(tmp_path: Path):
    profile = {
        "resourceType": "StructureDefinition", "url": "http://example.org/fhir/StructureDefinition/named-patient",
        "name": "NamedPatient", "status": "active", "kind": "resource", "abstract": False, "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient", "derivation": "constraint",
        "differential": {"element": [{"id": "Patient.name", "path": "Patient.name", "min": 1}]},
    }  # fmt: skip
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    (tmp_path / "p.json").write_text(json.dumps({"resourceType": "Patient", "active": True}))
    args = ["validate", "-p", R4, "--no-invariants", "--supporting", str(tmp_path / "profile.json")]
    result = fhirschema(*args, "--profile", profile["url"], str(tmp_path / "p.json"))
    assert result.returncode == 1
    issue = lines(result.stdout)[0]["outcome"]["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "fs301"
    assert "named-patient" in issue["diagnostics"]


def test_text_format_and_bundle():
    bundle = EXAMPLES / "hl7.fhir.uv.ips#2.0.0" / "Bundle-IPS-examples-Bundle-01.json"
    result = fhirschema("validate", "-p", R4, "--format", "text", str(bundle))
    assert result.returncode == 0, result.stdout
    assert result.stdout.decode().startswith(f"{bundle}: valid")


def test_io_and_usage_errors(tmp_path: Path):
    assert fhirschema("validate", "-p", R4, str(tmp_path / "missing.json")).returncode == 2
    (tmp_path / "broken.json").write_text("{nope")
    broken = fhirschema("validate", "-p", R4, str(tmp_path / "broken.json"))
    assert broken.returncode == 2 and b"not JSON" in broken.stderr
    assert fhirschema("validate").returncode == 2
    assert fhirschema("validate", "--format", "xml", str(PATIENT)).returncode == 2


def test_default_package_from_cache(tmp_path: Path):
    env = {"FHIR_PACKAGE_CACHE": str(tmp_path)}
    missing = fhirschema("validate", str(PATIENT), env=env)
    assert missing.returncode == 2
    assert b"fhirschema packages install" in missing.stderr
    assert fhirschema("packages", "install", R4, env=env).returncode == 0
    result = fhirschema("validate", str(PATIENT), env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(os.environ.get("CI_FAST") == "1", reason="cold start measured in bench/")
def test_cold_start_is_reasonable():
    import time

    started = time.perf_counter()
    assert fhirschema("validate", "-p", R4, str(PATIENT)).returncode == 0
    assert time.perf_counter() - started < 10  # the 1.5 s target is measured in bench/, not here
