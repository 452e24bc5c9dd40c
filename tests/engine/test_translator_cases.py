"""The 42 converter conformance cases in ../shared/fhirschema/cases/translator/.

Goldens were produced by the reference TypeScript converter and carry three artefacts that a
clean converter need not reproduce (cases/README.md): an `index` ordering key on elements, a
`_required` flag leaking into slice schemas, and the string "[Circular Reference]" where a
pattern object was shared. They are normalised away before the exact comparison.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhirschema.converter import convert
from tests.conftest import CASES

TRANSLATOR = CASES / "translator"


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _cases() -> list[Any]:
    params = []
    for file in sorted(TRANSLATOR.glob("*.yaml")):
        suite = yaml.safe_load(file.read_text())
        defaults = (suite.get("defaults") or {}).get("sd") or {}
        for test in suite["tests"]:
            params.append(pytest.param(file, defaults, test, id=f"{file.stem}: {test['desc']}"))
    return params


def _normalise(node: Any, parent_pattern: Any = None) -> Any:
    if isinstance(node, list):
        return [_normalise(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("index", "_required"):
            continue
        out[key] = _normalise(value)
    return out


def _circular(expected: Any, actual: Any) -> Any:
    """Replace "[Circular Reference]" in the golden with the value our output has there."""
    if expected == "[Circular Reference]":
        return actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: _circular(v, actual.get(k)) for k, v in expected.items()}
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [_circular(e, a) for e, a in zip(expected, actual, strict=True)]
    return expected


def _subset(expected: Any, actual: Any, where: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing; have {sorted(actual)}"
            _subset(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) >= len(expected), f"{where}: {actual!r}"
        for i, item in enumerate(expected):
            _subset(item, actual[i], f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: expected {expected!r}, got {actual!r}"


@pytest.mark.parametrize(("file", "defaults", "test"), _cases())
def test_translator_case(file: Path, defaults: dict[str, Any], test: dict[str, Any]) -> None:
    sd = json.loads((file.parent / test["sdFile"]).read_text()) if "sdFile" in test else test["sd"]
    sd = _deep_merge(defaults, sd)
    if test.get("throws"):
        with pytest.raises(ValueError):
            convert(sd)
        return
    expected = (
        json.loads((file.parent / test["expectedFile"]).read_text())
        if "expectedFile" in test
        else test["expected"]
    )
    actual = convert(sd)
    if test.get("exact"):
        expected = _circular(_normalise(expected), actual)
        assert actual == expected
    else:
        _subset(expected, actual)


def test_all_cases_found() -> None:
    assert len(_cases()) == 42
