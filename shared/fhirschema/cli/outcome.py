"""A result's OperationOutcome as the bytes `orjson.dumps(result.to_outcome())` gives, built from
parts: the CLI writes one per input that has findings (a third of the spec examples). Compiled
with the engine (scripts/build_engine.py): the 311 such results of the corpus cost 15.3M
instructions through to_outcome()'s dicts and orjson, 11.3M this way (callgrind), ~4.5k less per
NDJSON line of the CLI's ~360k.

An issue's fixed fields (severity, its FHIR issue type, the coding) come from a head made once per
(severity, code) out of to_outcome() itself, so they cannot drift from it; only its texts and
its expression are encoded per issue. A result with an issue at a line and column (input that is
not JSON, a repeated key: rare) is encoded from to_outcome() as before.
"""

from __future__ import annotations

import orjson

from fhirschema.validator import Issue, ValidationResult
from fhirschema.validator.issues import SEVERITY_RANK

ALL_OK = orjson.dumps(ValidationResult().to_outcome())
_START = b'{"resourceType":"OperationOutcome","issue":['
_TEXT = b'"text":'
_HEADS: dict[tuple[str, str], bytes] = {}  # (severity, code) -> '{"severity":...,"text":'


def outcome_json(result: ValidationResult) -> bytes:
    """orjson.dumps(result.to_outcome()), byte for byte."""
    issues = result.issues
    if not issues:
        return ALL_OK
    dumps, root, heads = orjson.dumps, result.resource_type, _HEADS
    parts = [_START]
    for issue in issues if len(issues) == 1 else sorted(issues, key=_rank):
        if issue.line is not None:
            return dumps(result.to_outcome())
        head = heads.get((issue.severity, issue.code)) or _head(issue.severity, issue.code)
        text = dumps(issue.message)
        diagnostics = dumps(f"{issue.message} (profile {issue.profile})") if issue.profile else text
        tail = dumps(issue.expression(root))
        parts += (head, text, b'},"diagnostics":', diagnostics, b',"expression":[', tail, b"]},")
    parts[-1] = b"]}]}"  # the last issue closed without a comma, then the list and the outcome
    return b"".join(parts)


def _rank(issue: Issue) -> int:
    return SEVERITY_RANK.get(issue.severity, 9)  # as to_outcome() sorts


def _head(severity: str, code: str) -> bytes:
    """The issue's encoding up to its text, cut out of to_outcome() of an issue with no text."""
    probe = orjson.dumps(ValidationResult([Issue(code, severity, [], "")]).to_outcome())
    head = probe[len(_START) : probe.index(_TEXT) + len(_TEXT)]
    _HEADS[severity, code] = head
    return head
