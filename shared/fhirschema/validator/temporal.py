"""date, dateTime and instant values in their plain form, decided without the regex engine.

`canonical` only ever says "certainly valid": anything else (other shapes, a final newline, an
impossible day) goes on to the regex and `_real_date` in primitives.py, which stay the rule's one
full statement. Compiled (scripts/build_engine.py), this
is a few dozen C comparisons instead of a backtracking match plus three slices and int() calls.
"""

from __future__ import annotations

from typing import Final

DATE: Final = 0  # YYYY, YYYY-MM, YYYY-MM-DD
DATETIME: Final = 1  # those, or a full date with a time and a zone
INSTANT: Final = 2  # a full date with a time and a zone only
# Not Final: compiled, a Final tuple is a C struct, boxed into a new 13-item tuple at every index.
_DAYS_IN_MONTH: tuple[int, ...] = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _number(value: str, start: int, width: int) -> int:
    """The number value[start:start + width] writes in ASCII digits, or -1."""
    total = 0
    for i in range(start, start + width):
        digit = ord(value[i]) - 48
        if digit < 0 or digit > 9:
            return -1
        total = total * 10 + digit
    return total


def canonical(value: str, form: int) -> bool:
    n = len(value)
    year = _number(value, 0, 4) if n >= 4 else -1
    if year <= 0:  # year 0000 does not exist
        return False
    if n == 4:
        return form != INSTANT
    if n < 7 or value[4] != "-":
        return False
    month = _number(value, 5, 2)
    if month < 1 or month > 12:
        return False
    if n == 7:
        return form != INSTANT
    if n < 10 or value[7] != "-":
        return False
    day = _number(value, 8, 2)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day < 1 or day > (29 if month == 2 and leap else _DAYS_IN_MONTH[month]):
        return False
    if n == 10:
        return form != INSTANT
    if form == DATE or n < 20 or value[10] != "T" or value[13] != ":" or value[16] != ":":
        return False
    hour, minute, second = _number(value, 11, 2), _number(value, 14, 2), _number(value, 17, 2)
    if hour < 0 or hour > 23 or minute < 0 or minute > 59 or second < 0 or second > 60:
        return False
    i = 19
    if value[i] == ".":
        end = i + 1
        while end < n and 48 <= ord(value[end]) <= 57:
            end += 1
        if end == i + 1 or end > i + 10:  # 1 to 9 fraction digits
            return False
        i = end
    if n - i == 1:
        return value[i] == "Z"
    if n - i != 6 or (value[i] != "+" and value[i] != "-") or value[i + 3] != ":":
        return False
    zone_hour, zone_minute = _number(value, i + 1, 2), _number(value, i + 4, 2)
    if zone_hour == 14:
        return zone_minute == 0
    return 0 <= zone_hour <= 13 and 0 <= zone_minute <= 59
