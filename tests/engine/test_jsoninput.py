"""fhirschema.jsoninput: bytes -> a resource to validate (not JSON, byte-order mark, repeated keys, depth)."""

from __future__ import annotations

import pickle
import random

import jiter
import orjson
import pytest

from fhirschema import jsoninput
from fhirschema.jsoninput import MAX_DEPTH, JsonInputError, ParsedInput, parse
from fhirschema.validator import Issue, ValidationResult
from fhirschema.validator.issues import COLUMN_URL, LINE_URL
from tests.conftest import EXAMPLES

SYNTAX = [
    # input, line, column (1-based, characters), words of the reason
    (b'{"a": [1, 2}', 1, 12, "expected ',' or ']'"),
    (b'{"a": 1,}', 1, 9, "comma before the closing bracket"),
    (b'{"a": 1', 1, 7, "'}' is missing"),
    (b'{"a": [1', 1, 8, "']' is missing"),
    (b'{"a": "x', 1, 8, "not closed"),
    (b'{"a": "\\x"}', 1, 9, "invalid escape"),
    (b'{"a": "\\u12"}', 1, 12, "invalid escape"),
    (b'{"a": 1}}', 1, 9, "after the end"),
    (b'{"a": 1} {"b": 2}', 1, 10, "after the end"),
    (b"{a: 1}", 1, 2, "key must be a string"),
    (b'{"a" 1}', 1, 6, "expected ':'"),
    (b'{"a": NaN}', 1, 7, "expected value"),
    (b'{"a": 01}', 1, 8, "invalid number"),
    (b'{"a": "\x01"}', 1, 8, "control character"),
    (b'{"a": "\xff"}', 1, 8, "not UTF-8"),
    (b"", 1, 1, "empty"),
    (b"  \n ", 2, 1, "empty"),
    (b'{\n  "resourceType": "Patient",\n  "id": "x",\n}', 4, 1, "comma before the closing bracket"),
    ('{"é€": [1, 2}'.encode(), 1, 13, "expected ','"),  # columns count characters, not bytes
]


@pytest.mark.parametrize(("data", "line", "column", "reason"), SYNTAX)
def test_not_json_is_an_error_at_its_line_and_column(
    data: bytes, line: int, column: int, reason: str
) -> None:
    with pytest.raises(JsonInputError) as caught:
        parse(data)
    exc = caught.value
    assert (exc.line, exc.column, exc.code) == (line, column, "fs1301")
    assert reason in exc.message
    issue = exc.issue()
    assert (issue.code, issue.severity, issue.line, issue.column) == ("fs1301", "fatal", line, column)
    assert f"line {line}, column {column}" in issue.message
    result = exc.result()
    assert not result.valid
    entry = result.to_outcome()["issue"][0]
    assert entry["extension"] == [
        {"url": LINE_URL, "valueInteger": line},
        {"url": COLUMN_URL, "valueInteger": column},
    ]
    assert entry["severity"] == "fatal" and entry["code"] == "invalid"


def test_str_input_is_parsed_like_its_utf8() -> None:
    assert parse('{"name": "Zoë"}').value == {"name": "Zoë"}
    with pytest.raises(JsonInputError, match="column 8"):
        parse('{"a": "\ud800"}')  # a lone surrogate has no UTF-8 form


def test_a_byte_order_mark_is_dropped_and_columns_count_after_it() -> None:
    assert parse(b'\xef\xbb\xbf{"resourceType": "Patient"}') == ParsedInput({"resourceType": "Patient"})
    assert parse('\ufeff{"a": 1}').value == {"a": 1}
    with pytest.raises(JsonInputError) as caught:
        parse(b'\xef\xbb\xbf{"a": 1,}')
    assert (caught.value.line, caught.value.column) == (1, 9)
    with pytest.raises(JsonInputError):
        parse(b"\xff\xfe{\x00}\x00")  # UTF-16 is not UTF-8


def test_repeated_keys_are_errors_at_the_repeat_and_the_first_value_is_kept() -> None:
    data = b'{\n  "resourceType": "Patient",\n  "gender": "male",\n  "gender": "female"\n}'
    parsed = parse(data)
    assert parsed.value == {"resourceType": "Patient", "gender": "male"}
    [issue] = parsed.issues
    assert (issue.code, issue.severity, issue.path, issue.line, issue.column) == (
        "fs1304", "error", ["gender"], 4, 3,
    )  # fmt: skip
    assert "'gender'" in issue.message and "line 4, column 3" in issue.message


def test_every_repeat_is_reported_with_its_path_nested_in_objects_and_arrays() -> None:
    data = b'{"a": {"b": 1, "b": [{"c": 1}], "b": 3}, "a": 3, "z": [1, {"q": 1, "q": {"r": 1, "r": 2}}]}'
    parsed = parse(data)
    assert parsed.value == {"a": {"b": 1}, "z": [1, {"q": 1}]}
    columns = [n + 1 for n in range(len(data)) if data.startswith((b'"b"', b'"a"', b'"q"', b'"r"'), n)]
    found = [(i.path, i.line, i.column) for i in parsed.issues]
    assert found == [
        (["a", "b"], 1, columns[2]), (["a", "b"], 1, columns[3]), (["a"], 1, columns[4]),
        (["z", 1, "q"], 1, columns[6]), (["z", 1, "q", "r"], 1, columns[8]),
    ]  # fmt: skip
    assert data[columns[6] - 1 :].startswith(b'"q": {')


def test_repeated_keys_do_not_hide_a_syntax_error_after_them() -> None:
    with pytest.raises(JsonInputError, match="after the end"):
        parse(b'{"a": 1, "a": 2} x')


def test_nesting_is_bounded_below_what_orjson_dumps_can_encode() -> None:
    def nested(levels: int) -> bytes:
        return b'{"a": ' * levels + b"1" + b"}" * levels

    value = parse(nested(MAX_DEPTH)).value  # a value inside MAX_DEPTH objects
    orjson.dumps([[[{"envelope": [{"items": [value]}] * 2}]]])  # room for message envelopes
    with pytest.raises(JsonInputError) as caught:
        parse(nested(MAX_DEPTH + 1))
    assert caught.value.code == "fs1302"
    assert (caught.value.line, caught.value.column) == (1, 6 * (MAX_DEPTH + 1) + 1)  # at the value
    assert caught.value.issue().severity == "fatal"
    with pytest.raises(JsonInputError, match="more than 3 levels"):
        parse(b"[[[[1]]]]", max_depth=3)
    assert parse(b"[[[1]]]", max_depth=3).value == [[[1]]]
    assert parse(b'[[[]], {"a": []}]', max_depth=2).value == [[[]], {"a": []}]
    with pytest.raises(JsonInputError, match="more than 3 levels"):
        parse(b'[[[{"a": 1, "a": 2}]]]', max_depth=3)  # the precise pass keeps the bound
    with pytest.raises(ValueError, match="max_depth"):
        parse(b"{}", max_depth=MAX_DEPTH + 1)


def _examples() -> list[bytes]:
    return [p.read_bytes() for p in sorted((EXAMPLES / "r4-spec").glob("*.json"))[:200]]


def test_real_resources_parse_as_orjson_parses_them_with_no_issue() -> None:
    for data in _examples():
        assert parse(data) == ParsedInput(orjson.loads(data))


def test_the_precise_pass_agrees_with_jiter_on_mutated_input() -> None:
    """Random edits of real resources: every outcome is a value or a JsonInputError, the precise
    pass (forced by a repeated key) accepts exactly what jiter accepts and gives jiter's value."""
    rng = random.Random(20261202)
    examples = _examples()
    for _ in range(1500):
        data = bytearray(rng.choice(examples)[:600])
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            edit = rng.choice((b"", b"{", b"}", b"[", b"]", b",", b'"', b":", b"\\", b" ", b"\n", b"\xff"))
            data[pos : pos + rng.randint(0, 2)] = edit
        source = bytes(data)
        try:
            expected = jiter.from_json(source, allow_inf_nan=False)
        except ValueError:
            expected = JsonInputError
        # The same document with a repeated key in front takes the precise pass.
        doubled = b'[{"k": 1, "k": 2}, ' + source + b"]" if source.strip() else source
        for candidate, wrap in ((source, False), (doubled, True)):
            try:
                parsed = parse(candidate)
            except JsonInputError:
                assert expected is JsonInputError, candidate
                continue
            assert expected is not JsonInputError, candidate
            assert parsed.value == ([{"k": 1}, expected] if wrap and source.strip() else expected)


def test_compact_value_is_the_value_only_when_no_key_can_be_repeated() -> None:
    for data in _examples()[:50]:
        compact = orjson.dumps(orjson.loads(data))
        assert jsoninput.compact_value(compact) == parse(compact).value
    repeated = [
        b'{"a":1,"a":1}', b'{"a":1,"a":22}', b'{"a":22,"a":1}', b'{"b":{"a":{},"a":{"c":[1,2,3]}}}',
        b'[{"x":1},{"k":"v","k":"v"}]', b'{"a":{"b":1},"a":{"b":1}}', b'{"resourceType":"Patient","id":"a","id":"b"}',
    ]  # fmt: skip
    for data in repeated:
        assert jsoninput.compact_value(data) is None, data
        assert parse(data).issues
    other_forms = [b'{"a": 1}', b'{"a":1.50}', b'{"a":"\\/"}', b'{"a":"\\u00e9"}', b'{"a":1e5}', b' {"a":1}']
    for data in [*other_forms, b'{"a":1', b"", b"null", b"123456789012345678901234567890", b"\xef\xbb\xbf{}"]:
        assert jsoninput.compact_value(data) is None, data


def test_compact_value_agrees_with_parse_on_mutated_compact_input() -> None:
    """Compact resources edited at random, some given a repeated key (an object's first key again
    at its start): a value is always parse()'s value with no issue; a repeated key is never one."""
    rng = random.Random(20261204)
    examples = [orjson.dumps(orjson.loads(data)) for data in _examples()[:60]]
    seen = {"value": 0, "repeated": 0}
    for _ in range(1500):
        data = bytearray(rng.choice(examples))
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.5:  # repeat the first key of an object: '{"k":' -> '{"k":0,"k":'
                starts = [n for n in range(len(data) - 1) if data[n : n + 2] == b'{"']
                at = rng.choice(starts) + 1
                key = data[at : data.index(b'":', at) + 2]
                data[at:at] = key + rng.choice((b"0", b'"x"', b"{}", b"[1]")) + b","
            else:
                pos = rng.randrange(len(data))
                data[pos : pos + rng.randint(0, 1)] = rng.choice(
                    (b"", b" ", b",", b'"', b"1", b"\\", b"\xc3")
                )
        source = bytes(data)
        value = jsoninput.compact_value(source)
        try:
            parsed: ParsedInput | None = parse(source)
        except JsonInputError:
            parsed = None
        if value is not None:
            assert parsed == ParsedInput(value), source
            seen["value"] += 1
        elif parsed is not None and parsed.issues:
            seen["repeated"] += 1
    assert seen["value"] > 100 and seen["repeated"] > 300, seen


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[object] = []

    def validate(self, resource: object, profiles: object = ()) -> ValidationResult:
        self.seen.append(resource)
        return ValidationResult([Issue("fs201", "error", ["foo"], "unknown element")], "Patient")


def test_validate_puts_the_input_findings_first_and_never_validates_what_is_not_json() -> None:
    validator = _Recorder()
    result = jsoninput.validate(validator, b'{"resourceType": "Patient", "id": "a", "id": "b"}')
    assert validator.seen == [{"resourceType": "Patient", "id": "a"}]
    assert [i.code for i in result.issues] == ["fs1304", "fs201"]
    assert result.resource_type == "Patient"
    assert result.to_outcome()["issue"][0]["expression"] == ["Patient.id"]
    broken = jsoninput.validate(validator, b'{"resourceType": "Patient",')
    assert len(validator.seen) == 1 and not broken.valid
    assert [i.code for i in broken.issues] == ["fs1301"]


def test_issues_with_a_position_survive_pickling_and_compare_by_it() -> None:
    issue = parse(b'{"a": 1, "a": 2}').issues[0]
    assert pickle.loads(pickle.dumps(issue)) == issue
    assert issue != Issue(issue.code, issue.severity, issue.path, issue.message)
    plain = Issue("fs201", "error", ["x"], "unknown element")
    assert pickle.loads(pickle.dumps(plain)) == plain and "line" not in repr(plain)
