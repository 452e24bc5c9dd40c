"""`split_reference` reads a literal reference exactly as the `REFERENCE` regex does: its string
fast paths must never answer differently from the regex they stand in for."""

from __future__ import annotations

import itertools

import pytest

from fhirschema.validator.references import REFERENCE, plain_slash, split_reference


def _by_regex(ref: str) -> tuple[str, str, str] | None:
    m = REFERENCE.match(ref)
    return None if m is None else (m.group("base") or "", m.group("type"), m.group("id"))


CASES = [
    "Patient/1", "Patient/example-1.2", "P/1", "Pa/1", "patient/1", "Patient/", "/1", "Patient",
    "Patient/1/", "Patient/1\n", "Patient/1\r", "Patient /1", "Patient/1 ", "Pätient/1", "Patient/1ä",
    "Patient/" + "a" * 64, "Patient/" + "a" * 65, "Patient/a_b", "Patient/a:b",
    "http://x/Patient/1", "https://x/Patient/1", "http:///Patient/1", "http://Patient/1",
    "https://Patient/1", "http://a b/Patient/1", "http://a\tb/Patient/1", "http://a/b/c/Patient/1",
    "http://x/Patient/1/_history/2", "http://x/Patient/1/_history/2/", "Patient/1/_history/2",
    "http://x/Patient/1/_history/a/b", "http://x/_history/Patient/1", "ftp://x/Patient/1",
    "HTTP://x/Patient/1", "http://x/Bb/Patient/1", "http://x/Patient/1/Observation/2",
    "http://exa\u00e9mple.org/fhir/Patient/1", "http://x\u00a0y/Patient/1", "http://x/Patient/1\n",
    "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "urn:oid:1.2.3", "#p1", "", "/", "//", "a/b/c",
    "http://hl7.org/fhir/us/core/Network/x", "Patient//1", "http://x//Patient/1",
]  # fmt: skip


def _agree(ref: str) -> None:
    assert split_reference(ref) == _by_regex(ref), ref
    j = plain_slash(ref)  # a plain Type/id, or -1: never a form the regex reads otherwise
    assert j < 0 or _by_regex(ref) == ("", ref[:j], ref[j + 1 :]), ref


@pytest.mark.parametrize("ref", CASES)
def test_the_regex_s_answer(ref: str) -> None:
    _agree(ref)


def test_every_short_string_over_an_alphabet_of_edge_characters() -> None:
    # Every string of up to 5 characters over the characters the forms turn on, with and without
    # a base in front: the fast paths and the regex agree on all of them.
    alphabet = "Pa1-./_ \n\u00e4h"
    for n in range(6):
        for chars in itertools.product(alphabet, repeat=n):
            tail = "".join(chars)
            for ref in (tail, "P" + tail, "Patient/" + tail, "http://x/" + tail, "https://x/Pa/" + tail):
                _agree(ref)
