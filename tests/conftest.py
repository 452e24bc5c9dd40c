"""Session-wide test configuration: where the shared FHIR material lives."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT.parent / "shared").resolve()
PACKAGES = SHARED / "fhir" / "packages"
EXAMPLES = SHARED / "fhir" / "examples"
CASES = SHARED / "fhirschema" / "cases"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found beside the checkout (looked in {SHARED})")
    return SHARED
