"""The native FHIRPath subset must agree with fhirpathpy wherever it gives an answer."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fhirschema.context import FhirContext
from fhirschema.fastpath import compile_subset
from fhirschema.invariants import Invariants
from fhirschema.validator import Validator
from tests.conftest import EXAMPLES, PACKAGES


class Recorder(Invariants):
    """Evaluates every constraint both ways and records disagreements."""

    def __init__(self) -> None:
        super().__init__()
        self.compared = 0
        self.disagreements: list[tuple[str, str, object, object]] = []

    def evaluate(self, expression, node, *, resource, root=None, path=None):  # type: ignore[override]
        fast = compile_subset(expression)
        verdict = (
            fast(node, {"root": root if root is not None else resource, "resource": resource})
            if fast
            else None
        )
        if verdict is not None:
            slow = self.slow(expression, node, resource=resource, root=root, path=path)
            self.compared += 1
            if slow.ok is not None and slow.ok != verdict:
                self.disagreements.append((expression, str(path), verdict, slow.ok))
        return super().evaluate(expression, node, resource=resource, root=root, path=path)

    def slow(self, expression, node, **kw):
        import fhirschema.invariants as inv

        saved = inv.compile_subset, inv.guard
        inv.compile_subset = inv.guard = lambda e: None
        try:
            return super().evaluate(expression, node, **kw)
        finally:
            inv.compile_subset, inv.guard = saved


@pytest.mark.parametrize("folder", ["r4-spec", "hl7.fhir.us.core#6.1.0"])
def test_native_subset_agrees_with_fhirpathpy(folder: str) -> None:
    ctx = FhirContext.from_specs(
        [PACKAGES / "hl7.fhir.us.core#6.1.0.tgz", PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"],
        with_dependencies=False,
    )
    recorder = Recorder()
    validator = Validator(ctx, invariants=recorder)
    files = sorted(Path(EXAMPLES / folder).glob("*.json"))[:300]
    for file in files:
        validator.validate(orjson.loads(file.read_bytes()))
    assert recorder.compared > 1000
    assert recorder.disagreements == []
