"""Generated documents (AsyncAPI, configuration reference) must describe the code as it is."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_asyncapi_document_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "asyncapi.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + "\nregenerate: .venv/bin/python scripts/asyncapi.py"


def test_asyncapi_lists_the_request_subjects() -> None:
    import json

    doc = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    addresses = {channel.get("address") for channel in doc["channels"].values()}
    for subject in ("fhirschema.validate.one", "fhirschema.validate.batch", "fhirschema.ingest.package"):
        assert subject in addresses, addresses


def test_configuration_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        result.stderr + "\nregenerate: .venv/bin/python scripts/config_reference.py"
    )


def test_asyncapi_describes_the_ingest_messages() -> None:
    """Direct NATS publishers of IngestRequest read the job's IngestJob and the search's reply."""
    import json

    doc = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    schemas = doc["components"]["schemas"]
    for model in ("IngestRequest", "IngestJob", "IngestedPackage", "RegistryQuery", "RegistryAnswer"):
        assert model in schemas, sorted(schemas)
    assert "fhirschema_ingest" in doc["info"]["description"]
