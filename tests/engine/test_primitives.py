"""The primitives' fast paths (Primitive.check) decide as the rules themselves (primitives.check)."""

from __future__ import annotations

import pytest

from fhirschema.validator.primitives import Primitive, check

ASCII = [chr(c) for c in range(128)]


@pytest.mark.parametrize("type_name", ["uri", "url", "canonical"])
def test_uri_fast_path_agrees_with_the_rule(type_name: str) -> None:
    prim = Primitive(type_name)
    values = ["", "http://example.org/a", "urn:uuid:1", "Binary/f006"]
    for c in ASCII:  # every ASCII character alone, first, inside and last
        values += [c, c + "http://x", "http://x" + c + "y", "http://x" + c, c * 3]
    for value in values:
        assert prim.check(value) == check(type_name, value), repr(value)


VALID = {
    "id": "a-1.b",
    "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
    "code": "two words",
    "date": "2020-01-31",
    "dateTime": "2020-01-31T10:00:00Z",
    "instant": "2020-01-31T10:00:00.123+01:00",
    "time": "10:00:00",
    "integer64": "-42",
    "uri": "http://example.org",
}


@pytest.mark.parametrize("type_name", sorted(VALID))
def test_a_final_newline_is_not_part_of_a_value(type_name: str) -> None:
    # A regex anchored with `$` matched before a final newline: "2020-01-31\n" passed as a date.
    value = VALID[type_name]
    assert check(type_name, value) is None
    assert Primitive(type_name).check(value) is None
    assert check(type_name, value + "\n") is not None
    assert Primitive(type_name).check(value + "\n") is not None
