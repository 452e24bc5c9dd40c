"""The validator compiled with mypyc (`make engine`) is in use when built, and agrees with its source.

Run as `python -m tests.engine.test_compiled_engine` (from the repository root) it prints the
issues of the example corpus as JSON: the equivalence test runs it with FHIRSCHEMA_PURE_PYTHON=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirschema import engine_build
from tests.conftest import EXAMPLES, PACKAGES, ROOT

# Every R4 spec example against R4 core, every US Core 6.1.0 example against its meta.profile.
CORPORA = ("r4-spec", "hl7.fhir.us.core#6.1.0")
MALFORMED = Path(__file__).parent / "data" / "malformed_resources.json"
PURE_PYTHON = os.environ.get("FHIRSCHEMA_PURE_PYTHON", "") not in ("", "0")


def corpus_issues() -> dict[str, Any]:
    """{folder/file: [[code, severity, path, message, profile], ...]}, terminology and invariants on
    (so the compiled FHIRPath subset is compared too)."""
    from fhirschema.context import FhirContext
    from fhirschema.invariants import Invariants
    from fhirschema.terminology import Terminology
    from fhirschema.validator import Validator

    ctx = FhirContext.from_specs(
        [PACKAGES / "hl7.fhir.us.core#6.1.0.tgz", PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"],
        with_dependencies=False,
    )
    validator = Validator(ctx, terminology=Terminology(ctx.resource), invariants=Invariants())
    resources = {
        f"{folder}/{file.name}": orjson.loads(file.read_bytes())
        for folder in CORPORA
        for file in sorted((EXAMPLES / folder).glob("*.json"))
    }
    # Malformed shapes (numbers for strings, objects for arrays, deep nesting, ...): compiled code
    # checks type hints at run time, so these must give the same issues, never a TypeError.
    for n, resource in enumerate(orjson.loads(MALFORMED.read_bytes())):
        resources[f"malformed[{n}]"] = resource
    found: dict[str, Any] = {}
    for name, resource in resources.items():
        try:
            issues = validator.validate(resource).issues
        except Exception as exc:  # reported, so the assertion shows which input and why
            found[name] = f"raised {exc!r}"
            continue
        found[name] = [[i.code, i.severity, i.path, i.message, i.profile] for i in issues]
    return found


def _skip_unless_compiled() -> None:
    if not engine_build.built():
        if os.environ.get("FHIRSCHEMA_REQUIRE_COMPILED", "") not in ("", "0"):
            pytest.fail("FHIRSCHEMA_REQUIRE_COMPILED is set but no compiled validator is installed")
        pytest.skip("no compiled validator (make engine needs a C compiler): the Python source runs")
    if PURE_PYTHON:
        pytest.skip("FHIRSCHEMA_PURE_PYTHON is set: the Python source runs by request")


def test_the_built_extensions_are_in_use() -> None:
    _skip_unless_compiled()
    assert engine_build.stale_modules() == [], "sources edited since the build: rebuild with `make engine`"
    assert engine_build.compiled()


def test_compiled_and_source_give_identical_issues() -> None:
    _skip_unless_compiled()
    if not engine_build.compiled():
        pytest.skip("the compiled validator is stale: see test_the_built_extensions_are_in_use")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.engine.test_compiled_engine"],
        cwd=ROOT,
        env={**os.environ, "FHIRSCHEMA_PURE_PYTHON": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    compiled = orjson.loads(orjson.dumps(corpus_issues()))  # as JSON, like the child's (tuples → lists)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()[-2000:]
    source = orjson.loads(out)
    assert source["compiled"] is False
    assert len(compiled) > 800 and sum(map(len, compiled.values())) > 0
    assert source["issues"].keys() == compiled.keys()
    pairs = {name: (issues, source["issues"][name]) for name, issues in compiled.items()}
    differ = {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}
    assert not differ, f"{len(differ)} differ; the first (compiled, source): {next(iter(differ.items()))}"
    raised = {name: rows for name, rows in compiled.items() if isinstance(rows, str)}
    assert not raised, raised


def test_cli_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    from fhirschema.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    build = "compiled (mypyc)" if engine_build.compiled() else "Python source"
    assert build in capsys.readouterr().out


def test_stale_modules_compares_sources_with_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_build, "_DIR", tmp_path)
    monkeypatch.setattr(engine_build, "MANIFEST", tmp_path / ".compiled")
    walk, plans = tmp_path / "walk.py", tmp_path / "plans.py"
    library = tmp_path / "_compiled__mypyc.so"
    walk.write_text("X = 1\n")
    plans.write_text("Y = 1\n")
    library.write_bytes(b"built")
    assert engine_build.stale_modules() == []  # no manifest: a wheel install
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (walk, plans)}
    stat = library.stat()
    manifest = {
        "library": {"file": library.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "sources": digests,
    }
    engine_build.MANIFEST.write_text(json.dumps(manifest))
    assert engine_build.stale_modules() == []
    walk.write_text("X = 2\n")
    assert engine_build.stale_modules() == ["walk.py"]
    plans.unlink()
    assert engine_build.stale_modules() == ["plans.py", "walk.py"]
    walk.write_text("X = 1\n")
    plans.write_text("Y = 1\n")
    library.write_bytes(b"another build")  # the manifest describes a different library
    assert engine_build.stale_modules() == [library.name]
    engine_build.MANIFEST.write_text("")  # `make engine` touches it after a failed build (no .so then)
    assert engine_build.stale_modules() == []


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps({"compiled": engine_build.compiled(), "issues": corpus_issues()}))
