"""The 326 validator conformance cases; expected failures carry a written reason."""

from __future__ import annotations

import pytest

from tests.engine.validator_cases import Case, load_cases, run_case, verdict

CASES = load_cases()

# Cases we do not pass, each with the reason (see docs/conformance.md).
KNOWN_FAILURES: dict[str, str] = {}


def test_case_count() -> None:
    assert len(CASES) == 326


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validator_case(case: Case) -> None:
    if case.test.get("skip"):
        pytest.skip(case.test.get("_skipReason") or "skipped by the case file")
    reason = KNOWN_FAILURES.get(case.id)
    if reason:
        pytest.xfail(reason)
    problems = verdict(case, run_case(case))
    assert not problems, "; ".join(problems)
