"""Batch bodies read as the CLI reads resources (no servers): members located without parsing,
NDJSON lines that are not JSON as failed items, repeated keys attached to their member."""

from __future__ import annotations

import orjson
import pytest

from tests.services import test_gateway_support  # noqa: F401  # puts the services on sys.path

from gateway.bodies import NDJSON_TYPES, parse_items  # isort: skip
from gateway.errors import BadRequest, InvalidInput  # isort: skip
from gateway.spans import member_spans  # isort: skip

NDJSON = next(iter(NDJSON_TYPES))
DEEP = b'{"resourceType": "Patient", "extension": ' + b"[" * 300 + b"]" * 300 + b"}"


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'[1, "a,]", {"x": ["]", "\\"{"]}, [[]]]',
        orjson.dumps(
            {"resourceType": "Bundle", "entry": [{"resource": {"a": [1]}, "x": 1}, {"resource": []}]}
        ),
        b'{"resourceType": "Bundle", "entry": [], "extra": {"entry": [{"resource": 5}]}}',
    ],
)
def test_member_spans_match_the_parsed_members(body: bytes) -> None:
    data = orjson.loads(body)
    members = data if isinstance(data, list) else [e["resource"] for e in data["entry"]]
    assert [orjson.loads(body[a:b]) for a, b in member_spans(body)] == members


def test_ndjson_lines_that_cannot_be_taken_are_failed_items() -> None:
    body = b'{"resourceType": "Patient"}\n\n{oops\n' + DEEP + b'\n{"a": 1, "a": 2}\n'
    items = parse_items(body, NDJSON)
    assert [i.source for i in items] == ["line 1", "line 3", "line 4", "line 5"]
    assert [i.failed is not None for i in items] == [False, True, True, False]
    assert items[1].failed and items[1].failed.issues[0].code == "fs1301"
    assert items[2].failed and items[2].failed.issues[0].code == "fs1302"
    assert items[3].resource == {"a": 1} and [i.code for i in items[3].issues] == ["fs1304"]


def test_arrays_and_bundles() -> None:
    body = b'[{"resourceType": "Patient"},\n ' + DEEP + b',\n {"a": 1, "a": 2}]'
    items = parse_items(body, "application/json")
    assert [i.failed is not None for i in items] == [False, True, False]
    [repeat] = items[2].issues
    assert (repeat.path, repeat.line, repeat.column) == (["a"], 3, 11)
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"b": 1}}]}
    body = orjson.dumps(bundle)[:-2] + b', {"resource": {"b": 1, "b": 3}}]}'
    items = parse_items(body, "application/json")
    assert [i.resource for i in items] == [{"b": 1}, {"b": 1}] and items[1].issues[0].path == ["b"]
    with pytest.raises(InvalidInput):
        parse_items(b"[1, }", "application/json")
    with pytest.raises(BadRequest):
        parse_items(
            b'{"resourceType": "Bundle", "entry": [{"fullUrl": "x"}, ' + DEEP + b"]}", "application/json"
        )
