"""Built-in primitive rules (SPEC §4): JSON kind and lexical form of each FHIR primitive."""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from typing import Any

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_DATE = re.compile(rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$")
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
_DATETIME = re.compile(rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T{_TIME}{_TZ})?)?)?$")
_INSTANT = re.compile(rf"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T{_TIME}{_TZ}$")
_TIME_ONLY = re.compile(rf"^{_TIME}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_OID = re.compile(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$")
_UUID = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_INTEGER64 = re.compile(r"^(0|-?[1-9][0-9]*)$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
_NO_WS = re.compile(r"^\S*$")

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


def _real_date(value: str) -> bool:
    if len(value) < 10:
        return True
    year, month, day = int(value[:4]), int(value[5:7]), int(value[8:10])
    return day <= calendar.monthrange(year, month)[1]


def _not_blank(v: str) -> bool:
    return bool(v) and not v.isspace()


def _int_in(lo: int) -> Callable[[Any], bool]:
    return lambda v: (
        (isinstance(v, int) and lo <= v <= INT32[1])
        or (isinstance(v, float) and v.is_integer() and lo <= v <= INT32[1])
    )


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: pattern.match(v) is not None


# Types whose lexical rule is exactly one regex match (checker() calls the match directly).
_PATTERN_ONLY = {
    "code": _CODE,
    "id": _ID,
    "oid": _OID,
    "uuid": _UUID,
    "base64Binary": _BASE64,
    "time": _TIME_ONLY,
}

_LEXICAL: dict[str, Callable[[Any], bool]] = {
    "string": _not_blank,
    "markdown": _not_blank,
    **{name: _matches(pattern) for name, pattern in _PATTERN_ONLY.items()},
    "uri": lambda v: bool(v) and _NO_WS.match(v) is not None,
    # R4's regex for url is `\S*`: relative urls (Attachment.url "Binary/f006") are legal.
    "url": lambda v: bool(v) and _NO_WS.match(v) is not None,
    "canonical": lambda v: bool(v) and _NO_WS.match(v) is not None,
    "date": lambda v: _DATE.match(v) is not None and _real_date(v),
    "dateTime": lambda v: _DATETIME.match(v) is not None and _real_date(v),
    "instant": lambda v: _INSTANT.match(v) is not None and _real_date(v),
    "xhtml": lambda v: v.lstrip().startswith("<div") and v.rstrip().endswith("</div>"),
    "integer64": lambda v: _INTEGER64.match(v) is not None and INT64[0] <= int(v) <= INT64[1],
    "integer": _int_in(INT32[0]),
    "unsignedInt": _int_in(0),
    "positiveInt": _int_in(1),
    "decimal": lambda v: True,
}


def check(type_name: str, value: Any) -> str | None:
    """The fs code of the first rule `value` breaks as a `type_name`, or None when it is fine."""
    if isinstance(value, dict | list):
        return "fs204"
    if type_name == "boolean":
        return None if value is True or value is False else "fs103"
    if type_name in NUMBER_TYPES:
        if not isinstance(value, int | float) or isinstance(value, bool):
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


_CHECKERS: dict[str, Callable[[Any], str | None]] = {}


def checker(type_name: str) -> Callable[[Any], str | None]:
    """`check` specialised for one type: the hot path for plain ASCII strings skips the generic
    dispatch (most primitive values in real resources are short ASCII strings)."""
    found = _CHECKERS.get(type_name)
    if found is not None:
        return found
    rule = _LEXICAL.get(type_name)
    code = CODES.get(type_name)

    def generic(value: Any) -> str | None:
        return check(type_name, value)

    pattern = _PATTERN_ONLY.get(type_name)
    if pattern is not None and code is not None:
        match = pattern.match  # the rule is this regex alone: no lambda in between

        def regex_check(value: Any) -> str | None:
            if type(value) is str and value.isascii():
                return None if match(value) is not None else code
            return check(type_name, value)

        found = regex_check
    elif type_name in ("string", "markdown") and code is not None:

        def text_check(value: Any) -> str | None:
            if type(value) is str and value.isascii():  # _not_blank, inlined: the commonest check
                return None if value and not value.isspace() else code
            return check(type_name, value)

        found = text_check
    elif type_name in STRING_TYPES and rule is not None and code is not None:

        def string_check(value: Any) -> str | None:
            if type(value) is str and value.isascii():
                return None if rule(value) else code
            return check(type_name, value)

        found = string_check
    elif type_name == "boolean":

        def boolean_check(value: Any) -> str | None:
            return None if value is True or value is False else check(type_name, value)

        found = boolean_check
    else:
        found = generic
    _CHECKERS[type_name] = found
    return found
