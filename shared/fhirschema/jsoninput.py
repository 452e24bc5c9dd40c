"""How bytes become a resource to validate: the same rules for the CLI and every service.

- Not JSON (unbalanced brackets, bad escapes, bytes that are not UTF-8, trailing content):
  `JsonInputError` with the 1-based line and column (in characters) of the fault. Its `issue()`
  is the fatal issue a result carries instead of a verdict on the resource.
- A UTF-8 byte-order mark before the JSON is dropped, as the HL7 validator does (it reads text
  with the mark removed); a column counts from the character after it.
- A key repeated in one object: an error issue at the repeated key (the first value is kept and
  the later ones are ignored, as the HL7 validator reports them), never a silent last-wins.
- Nesting: a value inside more than `MAX_DEPTH` (200) objects and arrays is refused
  (`JsonInputError`, issue fs1302). The bound is the parser's own, so it costs nothing, and it
  leaves room for the services: `orjson.dumps` refuses more than 254 levels, so a parsed
  resource can be wrapped in 53 levels of message envelope and still be encoded.

The fast path is one call to jiter (pydantic's JSON parser) with duplicate detection, about as
fast as `orjson.loads`; only input that jiter refuses takes a second, precise pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, not in typeshed
from typing import Any, Final, Protocol

import jiter
import orjson

from fhirschema.validator.issues import Issue, ValidationResult

MAX_DEPTH: Final = 200  # objects and arrays around a value; jiter's own recursion limit
NOT_JSON: Final = "fs1301"
TOO_DEEP: Final = "fs1302"
DUPLICATE_KEY: Final = "fs1304"

_BOM: Final = b"\xef\xbb\xbf"


def _too_deep(max_depth: int) -> str:
    return f"objects and arrays nested more than {max_depth} levels deep"


_POSITION = re.compile(r" at line (\d+) column (\d+)$")
# jiter's wording -> ours (the rest is kept, with `x` quoted as 'x')
_REASONS: Final = {
    "EOF while parsing a value": "the input ends where a value was expected",
    "EOF while parsing an object": "the input ends inside an object (a '}' is missing)",
    "EOF while parsing a list": "the input ends inside an array (a ']' is missing)",
    "EOF while parsing a string": "a string is not closed (a '\"' is missing)",
    "trailing comma": "a comma before the closing bracket",
    "trailing characters": "more content after the end of the JSON value",
    "key must be a string": "an object key must be a string in double quotes",
    "invalid escape": "invalid escape sequence in a string",
    "invalid unicode code point": "bytes that are not UTF-8",
    "control character (\\u0000-\\u001F) found while parsing a string": (
        "a control character in a string (it must be escaped, e.g. \\n)"
    ),
    "recursion limit exceeded": _too_deep(MAX_DEPTH),
}


class JsonInputError(ValueError):
    """The input is not JSON (or is nested too deeply to take): where, and why."""

    def __init__(self, message: str, line: int, column: int, code: str = NOT_JSON) -> None:
        super().__init__(f"{message} at line {line}, column {column}")
        self.message = message
        self.line = line
        self.column = column
        self.code = code

    def issue(self) -> Issue:
        what = "the input is not JSON" if self.code == NOT_JSON else "the input cannot be validated"
        return Issue(self.code, "fatal", [], f"{what}: {self}", line=self.line, column=self.column)

    def result(self) -> ValidationResult:
        """The result for this input: invalid, with the fatal issue only."""
        return ValidationResult([self.issue()])


@dataclass
class ParsedInput:
    value: Any  # the parsed JSON
    issues: list[Issue] = field(default_factory=list)  # findings of the input itself (duplicate keys)

    def result(self, validation: ValidationResult) -> ValidationResult:
        """The validator's result for `value` with the input's own findings first."""
        if not self.issues:
            return validation
        return ValidationResult(self.issues + validation.issues, validation.resource_type)


class _Validates(Protocol):
    def validate(self, resource: Any, profiles: Sequence[str] = ()) -> ValidationResult: ...


def validate(
    validator: _Validates, data: bytes | str, profiles: Sequence[str] = (), *, max_depth: int = MAX_DEPTH
) -> ValidationResult:
    """Parse and validate: the one outcome the CLI and the services give for the same bytes."""
    if max_depth == MAX_DEPTH and type(data) is bytes and not data.startswith(_BOM):
        try:  # the common case, without the steps it does not need (the CLI calls this per line)
            value = jiter.from_json(data, catch_duplicate_keys=True, allow_inf_nan=False, cache_mode="keys")
        except ValueError:
            pass  # parse() below says what is wrong, or finds the repeated keys
        else:
            return validator.validate(value, profiles)
    try:
        parsed = parse(data, max_depth=max_depth)
    except JsonInputError as exc:
        return exc.result()
    return parsed.result(validator.validate(parsed.value, profiles))


def compact_value(data: bytes) -> Any:
    """The value of `data` when `data` is exactly the JSON that orjson writes for it, else None.
    Then no key is repeated (orjson writes each key of an object once), so this is the value
    `validate` validates, found without jiter's repeated-key check: that check costs ~6 us of a
    7.6 kB line's ~18 us parse, orjson.dumps and the comparison ~2.5 us. NDJSON written by orjson,
    JSON.stringify or json.dumps(separators=(",", ":"), ensure_ascii=False) mostly is so."""
    try:
        value = jiter.from_json(data, allow_inf_nan=False, cache_mode="keys")
        if orjson.dumps(value) == data:
            return value
    except (ValueError, TypeError):  # not JSON (or nested too deeply); orjson: an int over 64 bits
        pass
    return None


def parse(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> ParsedInput:
    """Parse one JSON value (a resource, a Bundle, an NDJSON line); raises JsonInputError."""
    if not 0 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth must be between 0 and {MAX_DEPTH}")
    raw = _utf8(data)
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        # cache_mode "keys": key objects shared across documents (plans match them by identity)
        value = jiter.from_json(raw, catch_duplicate_keys=True, allow_inf_nan=False, cache_mode="keys")
    except ValueError as exc:
        if not str(exc).startswith("Detected duplicate key"):
            raise _error(raw, str(exc)) from None
        return _with_duplicates(raw, max_depth)
    if max_depth < MAX_DEPTH and _depth(value) > max_depth:
        return ParsedInput(_scan(raw.decode(), max_depth)[0])  # raises at the first level too deep
    return ParsedInput(value)


def _utf8(data: bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return data.encode()
    except UnicodeEncodeError as exc:  # lone surrogates in a str
        line, column = _line_column(data, exc.start)
        raise JsonInputError("a character that cannot be UTF-8 (a lone surrogate)", line, column) from None


def _error(raw: bytes, jiter_message: str) -> JsonInputError:
    """jiter's error as ours: its column counts bytes, ours characters, as the HL7 validator's."""
    match = _POSITION.search(jiter_message)
    reason = jiter_message[: match.start()] if match else jiter_message
    line, byte_column = (int(match[1]), int(match[2])) if match else (1, 1)
    start = 0
    for _ in range(line - 1):
        start = raw.index(b"\n", start) + 1
    column = len(raw[start : start + max(byte_column - 1, 0)].decode(errors="replace")) + 1
    code = TOO_DEEP if reason == "recursion limit exceeded" else NOT_JSON
    if not raw.strip():
        reason = "the input is empty"
    return JsonInputError(_REASONS.get(reason, reason.replace("`", "'")), line, column, code)


def _with_duplicates(raw: bytes, max_depth: int) -> ParsedInput:
    """The precise pass: every repeated key, where it is; the first value of each key kept."""
    try:
        jiter.from_json(raw, allow_inf_nan=False)  # the rest of the input may not be JSON
    except ValueError as exc:
        raise _error(raw, str(exc)) from None
    text = raw.decode()
    value, repeats = _scan(text, max_depth)
    issues = []
    for path, pos in repeats:
        line, column = _line_column(text, pos)
        issues.append(
            Issue(
                DUPLICATE_KEY,
                "error",
                path,
                f"the key {path[-1]!r} is repeated in this object (line {line}, column {column}): "
                "this value is ignored, the first one is used",
                line=line,
                column=column,
            )
        )
    return ParsedInput(value, issues)


def _line_column(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def _depth(value: Any) -> int:
    """The most objects and arrays around one value (0 for a scalar, 1 for `[1]` and `[[]]`)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)] if isinstance(value, (dict, list)) else []
    while todo:
        node, around = todo.pop()  # `around`: containers around this one
        if node:
            deepest = max(deepest, around + 1)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                todo.append((child, around + 1))
    return deepest


# -- the precise pass: a strict JSON scanner that keeps positions ---------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS: Final = {"true": True, "false": False, "null": None}


class _Frame:
    __slots__ = ("container", "keep", "key", "path")

    def __init__(self, container: dict[str, Any] | list[Any], path: list[str | int]) -> None:
        self.container = container
        self.path = path
        self.key = ""  # in an object: the key whose value comes next
        self.keep = True  # False: that key is a repeat, its value is dropped


def _scan(text: str, max_depth: int) -> tuple[Any, list[tuple[list[str | int], int]]]:
    """(value with the first of repeated keys, [(path of a repeated key, its position)]).

    Iterative (no recursion limit to meet); raises JsonInputError, but is only given text that
    jiter accepted apart from repeated keys or depth."""
    repeats: list[tuple[list[str | int], int]] = []
    stack: list[_Frame] = []
    n = len(text)
    i = _WS.match(text, 0).end()  # type: ignore[union-attr]  # always matches
    while True:
        if len(stack) > max_depth:  # a value inside more than max_depth containers (as jiter)
            raise JsonInputError(_too_deep(max_depth), *_line_column(text, i), TOO_DEEP)
        ch = text[i] if i < n else ""
        value: Any
        if ch in ("{", "["):
            frame = _Frame({} if ch == "{" else [], _next_path(stack))
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if text.startswith("}" if ch == "{" else "]", i):
                value, i = frame.container, i + 1
            else:
                stack.append(frame)
                if ch == "{":
                    i = _key(text, i, frame, repeats)
                continue
        elif ch == '"':
            value, i = _string(text, i)
        elif (number := _NUMBER.match(text, i)) is not None:
            value = float(number[0]) if number[1] or number[2] else int(number[0])
            i = number.end()
        else:
            word = next((w for w in _LITERALS if text.startswith(w, i)), None)
            if word is None:
                raise _unexpected(text, i)
            value, i = _LITERALS[word], i + len(word)
        while True:  # a value ends at i: store it, then close what closes here
            if not stack:
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if i != n:
                    raise _unexpected(text, i)
                return value, repeats
            frame = stack[-1]
            obj = isinstance(frame.container, dict)
            if isinstance(frame.container, dict):
                if frame.keep:
                    frame.container[frame.key] = value
            else:
                frame.container.append(value)
            i = _WS.match(text, i).end()  # type: ignore[union-attr]
            ch = text[i] if i < n else ""
            if ch == ",":
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
                if obj:
                    i = _key(text, i, frame, repeats)
                break
            if ch != ("}" if obj else "]"):
                raise _unexpected(text, i)
            stack.pop()
            value, i = frame.container, i + 1


def _next_path(stack: list[_Frame]) -> list[str | int]:
    if not stack:
        return []
    parent = stack[-1]
    container = parent.container
    return [*parent.path, parent.key if isinstance(container, dict) else len(container)]


def _key(text: str, i: int, frame: _Frame, repeats: list[tuple[list[str | int], int]]) -> int:
    if not text.startswith('"', i):
        raise _unexpected(text, i)
    key, j = _string(text, i)
    j = _WS.match(text, j).end()  # type: ignore[union-attr]
    if not text.startswith(":", j):
        raise _unexpected(text, j)
    frame.key = key
    frame.keep = key not in frame.container
    if not frame.keep:
        repeats.append(([*frame.path, key], i))
    return _WS.match(text, j + 1).end()  # type: ignore[union-attr]


def _string(text: str, i: int) -> tuple[str, int]:
    try:
        return scanstring(text, i + 1, True)
    except ValueError as exc:
        raise JsonInputError("invalid string", *_line_column(text, getattr(exc, "pos", i))) from None


def _unexpected(text: str, i: int) -> JsonInputError:
    found = repr(text[i]) if i < len(text) else "the end of the input"
    return JsonInputError(f"unexpected {found}", *_line_column(text, i))
