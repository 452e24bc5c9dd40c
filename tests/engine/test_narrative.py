"""Narrative txt-1/txt-2 (validator/narrative.py): the verdicts, and the faster scans giving the
same answer as the plain forms they replaced (a flat alternation of the allowed names; a
str.find per attribute gap)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fhirschema.validator import narrative
from fhirschema.validator.narrative import ALLOWED, problem

# The plain forms, kept here as the specification of the scans.
_FLAT_BAD_TAG = re.compile(
    r"<(?![/!?])(?!(?:" + "|".join(sorted(ALLOWED, key=len, reverse=True)) + r")[\s/>])\s*([A-Za-z][\w:.-]*)?"
)


def _plain_active(div: str) -> bool:
    if "script:" in div:
        return True
    for gap in (" on", "\non", "\ton"):
        i = div.find(gap)
        while i >= 0:
            if re.compile(r"on[a-z]+\s*=").match(div, i + 1) is not None:
                return True
            i = div.find(gap, i + 3)
    return False


def _div(body: str) -> str:
    return f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'


def test_allowed_and_refused_tags() -> None:
    for name in ALLOWED:
        for tag in (f"<{name}>x</{name}>", f"<{name}/>x", f'<{name} class="c">x</{name}>'):
            assert problem(_div(tag)) is None, tag
    # Prefixes and extensions of allowed names, upper case, a prefix, a space, no name.
    for tag, shown in (("<ab>", "ab"), ("<abbrx>", "abbrx"), ("<h7>", "h7"), ("<colg>", "colg"),
                       ("<P>", "P"), ("<x:p>", "x:p"), ("< script>", "script"), ("<1>", "?")):  # fmt: skip
        found = problem(_div(f"text {tag}"))
        assert found is not None and found.startswith(f"<{shown}> is not allowed"), (tag, found)


def test_active_content_and_empty_text() -> None:
    assert problem(_div('<a href="javascript:x()">a</a>')) is not None
    assert problem(_div('<p onclick="x()">a</p>')) is not None
    assert problem(_div('<p\tonload = "x()">a</p>')) is not None
    assert problem(_div("<p>only one</p>")) is None  # "one" is no attribute
    assert problem(_div("<p> </p>")) == "the narrative has no non-whitespace content (txt-2)"
    assert problem("<p>a</p>") == "the narrative must be a single xhtml <div> element"


_PIECES = st.sampled_from(
    ["<", ">", "/", " ", "\n", "\t", "on", "onclick", "=", "a", "b", "r", "col", "group", "h1", "h7",
     "div", "P", "x:", "!", "?", "script:", "1", "é"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_scans_agree_with_the_plain_forms(body: str) -> None:
    fast, plain = narrative._BAD_TAG.search(body), _FLAT_BAD_TAG.search(body)
    assert (fast and (fast.start(), fast.group(1))) == (plain and (plain.start(), plain.group(1)))
    assert narrative._active(body) == _plain_active(body)
