"""The published examples that validate (docs/conformance.md, "Real examples"): the floor is what
the engine reached, so that a new rule cannot silently turn valid examples invalid (raise it when
more pass; every remaining invalid example is triaged in docs/conformance.md)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.conftest import ROOT

# corpus of scripts/conformance.py -> (valid at least, of)
FLOORS = {
    "r4-spec": (704, 714),
    "us-core-6": (181, 183),
    "us-core-3": (81, 84),
    "ips": (43, 44),
    "genomics": (204, 204),
    "ch-core": (22, 23),
    "ch-orf": (34, 35),
    "ch-lab-order": (18, 18),
}


def _conformance() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance", ROOT / "scripts" / "conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("corpus", list(FLOORS))
def test_published_examples_validate(corpus: str) -> None:
    floor, total = FLOORS[corpus]
    report = _conformance().run(corpus, True)
    invalid = sorted({e["source"] for e in report["errors"]})
    assert report["total"] == total
    assert report["valid"] >= floor, (
        f"{corpus}: {report['valid']}/{total} valid < {floor}; invalid: {invalid}"
    )
