"""The date fast path (validator/temporal.py) may only ever accept what the regex rules accept."""

from __future__ import annotations

import random

import pytest

from fhirschema.validator import primitives, temporal

FORMS = {"date": temporal.DATE, "dateTime": temporal.DATETIME, "instant": temporal.INSTANT}
SAMPLES = [
    "2024", "0000", "0001", "2024-02", "2024-13", "2024-00", "2024-02-29", "2023-02-29", "1900-02-29",
    "2000-02-29", "2024-04-31", "2024-12-31", "2024-1-01", "2024-01-01\n", "2024-01-01T10:00:00Z",
    "2024-01-01T24:00:00Z", "2024-01-01T23:59:60Z", "2024-01-01T23:59:61Z", "2024-01-01T10:00:00",
    "2024-01-01T10:00:00.1Z", "2024-01-01T10:00:00.123456789+14:00", "2024-01-01T10:00:00.1234567890Z",
    "2024-01-01T10:00:00.Z", "2024-01-01T10:00:00+14:01", "2024-01-01T10:00:00-13:59",
    "2024-01-01T10:00:00+1:00", "2024-01-01T10:00Z", "2024-01-01 10:00:00Z", "2024-01-01t10:00:00z",
    "\uff12\uff10\uff12\uff14-01-01",  # fullwidth digits "2024-01-01T10:00:00Z\n", "+2024-01-01",
]  # fmt: skip


def _rule_valid(type_name: str, value: str) -> bool:
    return primitives._LEXICAL[type_name](value)  # the rule itself: regex and real calendar day


def _mutations(rng: random.Random, value: str) -> list[str]:
    alphabet = "0123456789-:T.Z+ \n9"
    out = []
    for _ in range(20):
        chars = list(value)
        i = rng.randrange(len(chars) + 1)
        op = rng.randrange(3)
        if op == 0 and chars:
            chars[min(i, len(chars) - 1)] = rng.choice(alphabet)
        elif op == 1:
            chars.insert(i, rng.choice(alphabet))
        elif chars:
            del chars[min(i, len(chars) - 1)]
        out.append("".join(chars))
    return out


@pytest.mark.parametrize("type_name", sorted(FORMS))
def test_fast_path_accepts_only_what_the_regex_accepts(type_name: str) -> None:
    rng = random.Random(1729)
    values = list(SAMPLES)
    for seed in SAMPLES:
        values += _mutations(rng, seed)
    for _ in range(3000):  # random real-looking dates and times, valid and not
        y, mo, d = rng.randrange(0, 10000), rng.randrange(0, 14), rng.randrange(0, 33)
        h, mi, s = rng.randrange(0, 26), rng.randrange(0, 62), rng.randrange(0, 62)
        frac = rng.choice(["", ".5", ".123", ".1234567891"])
        zone = rng.choice(["Z", "+14:00", "-14:30", "+05:30", ""])
        values.append(f"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone}")
        values.append(f"{y:04}-{mo:02}-{d:02}"[: rng.choice([4, 7, 10])])
    accepted = 0
    for value in values:
        fast = temporal.canonical(value, FORMS[type_name]) if value.isascii() else False
        if fast:
            accepted += 1
            assert _rule_valid(type_name, value), value
    assert accepted > 100  # and the fast path does decide the common case


@pytest.mark.parametrize(
    ("type_name", "value"),
    [("date", "2024-02-29"), ("dateTime", "2015-02-07T13:28:17.239+02:00"), ("instant", "2015-02-07T13:28:17Z"),
     ("dateTime", "2015"), ("date", "2015-02")],
)  # fmt: skip
def test_plain_forms_are_decided_by_the_fast_path(type_name: str, value: str) -> None:
    assert temporal.canonical(value, FORMS[type_name])
    assert primitives.checker(type_name).check(value) is None
