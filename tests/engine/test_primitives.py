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
