"""Where the members of a batch body are in its bytes, without parsing it: for a body that
nests too deeply somewhere to be parsed whole, so that each member is read on its own (as the
CLI reads one resource) and only the members that are too deep fail."""

from __future__ import annotations

import re

# A string (escapes included) or a structural character; numbers, literals and whitespace
# between them do not matter here.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.S)
_ENTRY, _RESOURCE = b'"entry"', b'"resource"'


def member_spans(body: bytes) -> list[tuple[int, int]]:
    """Byte spans of a JSON array's elements, or of a Bundle's `entry[*].resource` values, in
    order. Not a validator: it is given bodies that are JSON but for their depth."""
    spans: list[tuple[int, int]] = []
    depth = 0
    root = b""
    start = -1  # where the member being read began (after '[' / ',' / "resource":)
    last_string = b""
    keys: dict[int, bytes] = {}  # object depth -> the key whose value is being read
    in_entries = False  # inside Bundle.entry (objects at depth 3)
    for m in _TOKEN.finditer(body):
        tok = m.group()
        c = tok[:1]
        if c == b'"':
            last_string = tok
        elif c == b":":
            keys[depth] = last_string
            if in_entries and depth == 3 and last_string == _RESOURCE:
                start = m.end()
        elif c in b"[{":
            if depth == 0:
                root = c
                start = m.end() if c == b"[" else -1
            elif root == b"{" and depth == 1 and c == b"[" and keys.get(1) == _ENTRY:
                in_entries = True
            depth += 1
        elif c in b"]}":
            depth -= 1
            if (root == b"[" and depth == 0 and body[start : m.start()].strip()) or (
                in_entries and depth == 2 and start >= 0
            ):
                spans.append((start, m.start()))
                start = -1
            if in_entries and depth == 1:
                in_entries = False
        elif c == b",":
            if root == b"[" and depth == 1:
                spans.append((start, m.start()))
                start = m.end()
            elif in_entries and depth == 3 and start >= 0:
                spans.append((start, m.start()))
                start = -1
    return spans
