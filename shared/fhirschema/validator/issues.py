"""Issues and their FHIR OperationOutcome form (SPEC §5)."""

from __future__ import annotations

from typing import Any

ISSUE_SYSTEM = "https://fhirschema.dev/CodeSystem/validation-issue"

# fs code → FHIR IssueType
_FHIR_CODE = {
    "fs201": "structure", "fs202": "structure", "fs203": "structure", "fs204": "structure",
    "fs205": "value", "fs206": "value", "fs207": "structure",
    "fs301": "required", "fs302": "structure", "fs303": "required",
    "fs401": "structure", "fs402": "structure",
    "fs501": "code-invalid", "fs502": "code-invalid", "fs503": "code-invalid", "fs504": "code-invalid",
    "fs505": "not-supported", "fs601": "invariant", "fs602": "not-supported",
    "fs701": "not-found", "fs801": "structure", "fs802": "structure",
    "fs901": "structure", "fs902": "structure", "fs903": "structure", "fs904": "structure",
    "fs1001": "structure", "fs1002": "not-found", "fs1003": "invalid", "fs1004": "business-rule",
    "fs1101": "extension", "fs1102": "extension", "fs1103": "extension", "fs1201": "business-rule", "fs1202": "business-rule",
    "fs1301": "invalid", "fs1302": "too-costly", "fs1303": "too-long", "fs1304": "invalid",
}  # fmt: skip

_FHIR_CODE.update({f"fs{n}": "value" for n in range(104, 124)})
_FHIR_CODE.update({"fs101": "structure", "fs102": "structure", "fs103": "structure"})
# Issue 10's rules: value limits, sub-extensions, Bundle/document rules, narrative.
_FHIR_CODE.update({"fs506": "code-invalid", "fs702": "structure", "fs208": "value", "fs209": "value", "fs210": "value", "fs1104": "extension",
                   "fs1203": "invalid", "fs1204": "not-found", "fs1205": "invalid", "fs1401": "value"})  # fmt: skip

SEVERITY_RANK = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
# Where in the input text an issue is (fhirschema.jsoninput: not JSON, repeated keys).
LINE_URL = "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-line"
COLUMN_URL = "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-col"

_Fields = tuple[str, str, list[str | int], str, str | None, int | None, int | None]


class Issue:
    # Not a dataclass: compiled (scripts/build_engine.py), a dataclass keeps an interpreted
    # __init__, and the walk creates one Issue per finding.
    __slots__ = ("code", "column", "line", "message", "path", "profile", "severity")

    def __init__(
        self,
        code: str,
        severity: str,
        path: list[str | int],
        message: str,
        profile: str | None = None,
        *,
        line: int | None = None,  # 1-based, in the input text (set by fhirschema.jsoninput)
        column: int | None = None,
    ) -> None:
        self.code = code
        self.severity = severity
        self.path = path
        self.message = message
        self.profile = profile
        self.line = line
        self.column = column

    def _fields(self) -> _Fields:
        return (self.code, self.severity, self.path, self.message, self.profile, self.line, self.column)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Issue) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy (compiled, there is no __dict__); line and column are keyword-only
        if self.line is None and self.column is None:
            return (Issue, self._fields()[:5])
        return (_issue_at, self._fields())

    def __repr__(self) -> str:
        text = "Issue(code={!r}, severity={!r}, path={!r}, message={!r}, profile={!r}".format(*self._fields())
        if self.line is not None or self.column is not None:
            text += f", line={self.line!r}, column={self.column!r}"
        return text + ")"

    def expression(self, root: str | None) -> str:
        out = root or "$this"
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out


def _issue_at(
    code: str, severity: str, path: list[str | int], message: str, profile: str | None,
    line: int | None, column: int | None,
) -> Issue:  # fmt: skip
    return Issue(code, severity, path, message, profile, line=line, column=column)


class ValidationResult:
    __slots__ = ("issues", "resource_type")

    def __init__(self, issues: list[Issue] | None = None, resource_type: str | None = None) -> None:
        self.issues: list[Issue] = [] if issues is None else issues
        self.resource_type = resource_type

    def __repr__(self) -> str:
        return f"ValidationResult(issues={self.issues!r}, resource_type={self.resource_type!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ValidationResult)
            and self.issues == other.issues
            and self.resource_type == other.resource_type
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[ValidationResult], tuple[list[Issue], str | None]]:
        return (ValidationResult, (self.issues, self.resource_type))

    @property
    def valid(self) -> bool:
        return not any(i.severity in ("error", "fatal") for i in self.issues)

    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    def to_outcome(self) -> dict[str, Any]:
        issues = []
        for issue in sorted(self.issues, key=lambda i: SEVERITY_RANK.get(i.severity, 9)):
            diagnostics = issue.message
            if issue.profile:
                diagnostics += f" (profile {issue.profile})"
            entry: dict[str, Any] = {
                "severity": issue.severity,
                "code": _FHIR_CODE.get(issue.code, "processing"),
                "details": {
                    "coding": [{"system": ISSUE_SYSTEM, "code": issue.code}],
                    "text": issue.message,
                },
                "diagnostics": diagnostics,
                "expression": [issue.expression(self.resource_type)],
            }
            if issue.line is not None:
                entry = {"extension": _position(issue.line, issue.column), **entry}
            issues.append(entry)
        if not issues:
            issues.append({"severity": "information", "code": "informational", "diagnostics": "All OK"})
        return {"resourceType": "OperationOutcome", "issue": issues}


def _position(line: int, column: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"url": LINE_URL, "valueInteger": line}]
    if column is not None:
        out.append({"url": COLUMN_URL, "valueInteger": column})
    return out
