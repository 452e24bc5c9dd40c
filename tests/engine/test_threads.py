"""One context and validator shared by threads (as the validator service runs them) give the same verdicts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from fhirschema.context import FhirContext
from fhirschema.invariants import Invariants
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator
from tests.conftest import EXAMPLES, PACKAGES


def _validator() -> Validator:
    ctx = FhirContext.from_specs(
        [PACKAGES / "hl7.fhir.us.core#6.1.0.tgz", PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"],
        with_dependencies=False,
    )
    return Validator(ctx, invariants=Invariants(), terminology=Terminology(ctx.resource))


def test_cold_caches_under_threads_give_sequential_verdicts() -> None:
    resources = [
        orjson.loads(f.read_bytes()) for f in sorted(Path(EXAMPLES / "hl7.fhir.us.core#6.1.0").glob("*.json"))
    ]
    alone = _validator()
    sequential = [alone.validate(r).to_outcome() for r in resources]
    shared = _validator()  # cold: every schema, plan and value set is built while threads race
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda r: shared.validate(r).to_outcome(), resources))
    assert threaded == sequential
