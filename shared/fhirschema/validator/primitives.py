"""Built-in primitive rules (SPEC §4): JSON kind and lexical form of each FHIR primitive."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from fhirschema.validator import temporal
from fhirschema.validator.narrative import is_div

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# Anchored with \Z, not `$`: `$` also matches before a final newline, which FHIR's regexes (whole
# values) do not allow: "2020-01-01\n" is no date.
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_DATE = re.compile(rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?\Z")
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
_DATETIME = re.compile(rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T{_TIME}{_TZ})?)?)?\Z")
_INSTANT = re.compile(rf"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T{_TIME}{_TZ}\Z")
_TIME_ONLY = re.compile(rf"^{_TIME}\Z")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
_OID = re.compile(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+\Z")
_UUID = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_CODE = re.compile(r"^[^\s]+( [^\s]+)*\Z")
_INTEGER64 = re.compile(r"^(0|-?[1-9][0-9]*)\Z")
# base64Binary's alphabet plus the whitespace the FHIR regex allows, checked with bytes.translate:
# Attachment.data runs to megabytes, where a regex character class is ~5x slower.
_BASE64_ALPHABET = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\n\r\f\v\x1c\x1d\x1e\x1f"
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+\Z")  # the rule itself; non-ASCII text (Unicode \s) goes here
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+\Z")
_NO_WS = re.compile(r"^\S*\Z")

STRING_TYPES = frozenset(
    [
        "string",
        "markdown",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "base64Binary",
        "date",
        "dateTime",
        "instant",
        "time",
        "xhtml",
        "integer64",
    ]
)
NUMBER_TYPES = frozenset(("integer", "unsignedInt", "positiveInt", "decimal"))
PRIMITIVES = STRING_TYPES | NUMBER_TYPES | {"boolean"}

# FHIRPath system types appear as element types in R4 (Element.id, Extension.url, ...).
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}

CODES = {
    "base64Binary": "fs104", "canonical": "fs105", "code": "fs106", "date": "fs107",
    "dateTime": "fs108", "decimal": "fs109", "id": "fs110", "instant": "fs111",
    "integer": "fs112", "integer64": "fs113", "markdown": "fs114", "oid": "fs115",
    "positiveInt": "fs116", "string": "fs117", "time": "fs118", "unsignedInt": "fs119",
    "uri": "fs120", "url": "fs121", "uuid": "fs122", "xhtml": "fs123",
}  # fmt: skip


# str methods mypyc has no primitive for, called through the method descriptor rather than an
# attribute lookup on every value (compiled, these are C constants). isalnum/isspace/isdigit do
# have primitives (an ASCII table loop): those are called as methods.
_isascii: Final = str.isascii
_isprintable: Final = str.isprintable
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _real_date(value: str) -> bool:
    if len(value) < 10:
        return True
    year, month, day = int(value[:4]), int(value[5:7]), int(value[8:10])
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS_IN_MONTH[month]


def _not_blank(v: str) -> bool:
    return bool(v) and not v.isspace()


def _int_in(lo: int) -> Callable[[Any], bool]:
    return lambda v: (
        (isinstance(v, int) and lo <= v <= INT32[1])
        or (isinstance(v, float) and v.is_integer() and lo <= v <= INT32[1])
    )


def _no_whitespace(v: str) -> bool:
    return bool(v) and _NO_WS.match(v) is not None


def _no_whitespace_ascii(v: str) -> bool:
    r"""`_no_whitespace` for an ASCII `v`: str.split() and the regex's `\s` know the same
    whitespace, and split() finds it with a table per character (isprintable() looked each
    character up in the Unicode database: ~3x the instructions, callgrind). Without whitespace,
    split() returns `v` itself in a list of one."""
    parts = v.split()
    return len(parts) == 1 and len(parts[0]) == len(v)


def _base64(v: str) -> bool:
    if v.isascii():
        # ~9 instructions a byte (callgrind, 3 MB): fewer than binascii.a2b_base64 (24), the
        # regex (22), or replace() + isalnum() (8.5 with the copies), so translate it stays.
        return bool(v) and not v.encode("ascii").translate(None, _BASE64_ALPHABET)
    return _BASE64.match(v) is not None


def _xhtml(v: str) -> bool:
    return is_div(v)


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: pattern.match(v) is not None


# Types whose lexical rule is exactly one regex match (checker() calls the match directly).
_PATTERN_ONLY = {
    "code": _CODE,
    "id": _ID,
    "oid": _OID,
    "uuid": _UUID,
    "time": _TIME_ONLY,
}

_LEXICAL: dict[str, Callable[[Any], bool]] = {
    "string": _not_blank,
    "markdown": _not_blank,
    **{name: _matches(pattern) for name, pattern in _PATTERN_ONLY.items()},
    "base64Binary": _base64,
    "uri": _no_whitespace,
    # R4's regex for url is `\S*`: relative urls (Attachment.url "Binary/f006") are legal.
    "url": _no_whitespace,
    "canonical": _no_whitespace,
    "date": lambda v: _DATE.match(v) is not None and _real_date(v),
    "dateTime": lambda v: _DATETIME.match(v) is not None and _real_date(v),
    "instant": lambda v: _INSTANT.match(v) is not None and _real_date(v),
    "xhtml": _xhtml,
    "integer64": lambda v: _INTEGER64.match(v) is not None and INT64[0] <= int(v) <= INT64[1],
    "integer": _int_in(INT32[0]),
    "unsignedInt": _int_in(0),
    "positiveInt": _int_in(1),
    "decimal": lambda v: True,
}


def check(type_name: str, value: Any) -> str | None:
    """The fs code of the first rule `value` breaks as a `type_name`, or None when it is fine."""
    # Tuples, not `dict | list`: compiled, the union would be built on every call.
    if isinstance(value, (dict, list)):
        return "fs204"
    if type_name == "boolean":
        return None if value is True or value is False else "fs103"
    if type_name in NUMBER_TYPES:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "fs102"
    elif not isinstance(value, str):
        return "fs101"
    elif not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone UTF-16 surrogates: not Unicode text
            return CODES.get(type_name, "fs117")
    if type_name in ("unsignedInt", "positiveInt") and isinstance(value, float) and not value.is_integer():
        return "fs112"  # not a whole number at all: the integer rule, as the reference validators report
    rule = _LEXICAL.get(type_name)
    if rule is None or rule(value):
        return None
    return CODES[type_name]


# Primitive.kind: which fast path decides a plain ASCII string (or a JSON number) of the type.
GENERIC: Final = 0
TEXT: Final = 1
PATTERN: Final = 2
DATE: Final = 3
URI: Final = 4
BASE64: Final = 5
RULE: Final = 6
BOOLEAN: Final = 7
NUMBER: Final = 8
XHTML: Final = 9
_DATE_FORMS = {"date": temporal.DATE, "dateTime": temporal.DATETIME, "instant": temporal.INSTANT}
_INT_LOW = {"integer": INT32[0], "unsignedInt": 0, "positiveInt": 1}


class Primitive:
    """`check` specialised for one type. The common values (short ASCII strings, plain numbers)
    are decided inline; everything else goes to `check`, the rules' one full statement.

    A class rather than a closure so that the compiled walk calls `check` directly (see
    docs/architecture.md, "Compiled engine")."""

    __slots__ = ("code", "form", "high", "kind", "low", "match", "name", "rule")

    def __init__(self, type_name: str) -> None:
        self.name = type_name
        self.code: str = CODES.get(type_name, "fs117")
        self.rule = _LEXICAL.get(type_name)
        self.match: Callable[[str], object] | None = None
        self.low = _INT_LOW.get(type_name, 0)
        self.high = INT32[1]
        self.form = _DATE_FORMS.get(type_name, temporal.DATE)
        pattern = _PATTERN_ONLY.get(type_name)
        if pattern is not None:
            self.match = pattern.match
        if type_name not in CODES and type_name != "boolean":
            self.kind = GENERIC
        elif type_name in ("string", "markdown"):
            self.kind = TEXT
        elif type_name in _PATTERN_ONLY:
            self.kind = PATTERN
        elif type_name in _DATE_FORMS:
            self.kind = DATE
        elif type_name in ("uri", "url", "canonical"):
            self.kind = URI
        elif type_name == "base64Binary":
            self.kind = BASE64
        elif type_name == "boolean":
            self.kind = BOOLEAN
        elif type_name == "xhtml":
            self.kind = XHTML
        elif type_name in NUMBER_TYPES:
            self.kind = NUMBER
        elif type_name in STRING_TYPES and self.rule is not None:
            self.kind = RULE
        else:
            self.kind = GENERIC

    def check(self, value: Any) -> str | None:
        kind = self.kind
        if type(value) is str:
            if _isascii(value):
                if kind == TEXT:
                    return None if value and not value.isspace() else self.code
                if kind == PATTERN:
                    # The commonest codes and ids are decided without the regex engine: a code
                    # with no spaces or control characters, an id of letters and digits.
                    if self.name == "code" and (
                        value.isalnum() or (" " not in value and _isprintable(value) and value)
                    ):
                        return None
                    if self.name == "id" and value.isalnum() and len(value) <= 64:
                        return None
                    return None if self.match(value) is not None else self.code  # type: ignore[misc]
                if kind == DATE:  # the plain forms without the regex engine, the rest by the rule
                    return None if temporal.canonical(value, self.form) or self.rule(value) else self.code  # type: ignore[misc]
                if kind == URI:
                    return None if _no_whitespace_ascii(value) else self.code
                if kind == BASE64:
                    return None if _base64(value) else self.code
                if kind == XHTML:
                    return None if _xhtml(value) else self.code
                if kind == RULE:
                    return None if self.rule(value) else self.code  # type: ignore[misc]
        elif kind == BOOLEAN:
            if value is True or value is False:
                return None
        elif kind == NUMBER:
            if type(value) is int:
                return None if self.name == "decimal" or self.low <= value <= self.high else self.code
            if type(value) is float and self.name == "decimal":
                return None
        return check(self.name, value)


_CHECKERS: dict[str, Primitive] = {}


def checker(type_name: str) -> Primitive:
    """The (shared) `Primitive` of a type."""
    found = _CHECKERS.get(type_name)
    if found is None:
        found = _CHECKERS[type_name] = Primitive(type_name)
    return found
