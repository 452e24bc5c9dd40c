"""`fhirschema validate [--package SPEC]... [--profile URL]... [--supporting FILE]... PATH...`

A fixed contract (other tools depend on it). One NDJSON line per validated resource:
`{"source": "<path>" | "<path>:<line>", "valid": bool, "outcome": <OperationOutcome>}`.
Exit 0 all valid, 1 any invalid, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from fhirschema.cli.common import (
    InputError,
    add_package_options,
    cache_from,
    error,
    read_json_file,
    write_line,
)
from fhirschema.context import FhirContext
from fhirschema.package import PackageError
from fhirschema.validator import ValidationResult, Validator

DEFAULT_PACKAGE = "hl7.fhir.r4.core#4.0.1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate",
        help="validate FHIR resources (JSON, Bundle, NDJSON) against profiles",
        description="Validate resources; one NDJSON line per resource on stdout. Without --package, "
        f"{DEFAULT_PACKAGE} is loaded from the package cache.",
    )
    add_package_options(parser)
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="URL",
        help="profile to validate against (repeatable)",
    )
    parser.add_argument(
        "--supporting", action="append", default=[], metavar="FILE",
        help="extra StructureDefinition/ValueSet/CodeSystem JSON files or Bundles (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-invariants", action="store_true", help="do not evaluate FHIRPath invariants")
    parser.add_argument(
        "--no-terminology", action="store_true", help="do not check coded values against value sets"
    )
    parser.add_argument(
        "--strict", action="store_true", help="unknown profiles and resource types are errors"
    )
    parser.add_argument(
        "--format", choices=("ndjson", "text"), default="ndjson", help="output format (default ndjson)"
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="JSON resource file, .ndjson file, or - for stdin"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        context = _context(args)
    except (PackageError, InputError) as exc:
        error("validate", str(exc))
        return 2
    validator = _validator(context, args)
    progress = _progress(args.paths)
    any_invalid = False
    io_error = False
    for source, resource in _inputs(args.paths):  # streamed: an NDJSON file is never held whole
        if isinstance(resource, InputError):
            error("validate", str(resource))
            io_error = True
            progress.update()
            continue
        result = validator.validate(resource, args.profile)
        any_invalid |= not result.valid
        _emit(args.format, source, result)
        progress.update()
    progress.close()
    if io_error:
        return 2
    return 1 if any_invalid else 0


def _context(args: argparse.Namespace) -> FhirContext:
    cache = cache_from(args)
    specs = args.package or [DEFAULT_PACKAGE]
    if not args.package and cache.resolve(DEFAULT_PACKAGE) is None:
        raise InputError(
            f"{DEFAULT_PACKAGE} is not in the package cache {cache.root}. Install it with "
            f"`fhirschema packages install path/to/{DEFAULT_PACKAGE}.tgz`, or pass --package FILE.tgz"
        )
    context = FhirContext.from_specs(specs, cache=cache)
    for warning in context.warnings:
        error("validate", f"warning: {warning}")
    for path in args.supporting:
        data = read_json_file(path)
        if not isinstance(data, dict) or "resourceType" not in data:
            raise InputError(f"{path}: not a FHIR resource")
        context.add_resource(data)
    return context


def _validator(context: FhirContext, args: argparse.Namespace) -> Validator:
    invariants = None
    if not args.no_invariants:
        from fhirschema.invariants import Invariants

        invariants = Invariants()
    terminology = None
    if not args.no_terminology:
        from fhirschema.terminology import Terminology

        terminology = Terminology(context.resource)
    return Validator(context, invariants=invariants, terminology=terminology, strict=args.strict)


def _inputs(paths: list[str]) -> Iterator[tuple[str, Any]]:
    for path in paths:
        if path != "-" and not Path(path).is_file():
            yield path, InputError(f"{path}: no such file")
            continue
        if path.endswith(".ndjson"):
            with open(path, "rb") as handle:
                yield from _ndjson(path, handle)
            continue
        data = sys.stdin.buffer.read() if path == "-" else None
        if data is None:
            try:
                yield path, read_json_file(path)
            except InputError as exc:
                yield path, exc
            continue
        try:
            yield "-", orjson.loads(data)
        except orjson.JSONDecodeError:
            yield from _ndjson("-", data.splitlines())  # stdin may be NDJSON


def _ndjson(path: str, lines: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield f"{path}:{number}", InputError(f"{path}:{number}: not JSON ({exc})")


def _emit(fmt: str, source: str, result: ValidationResult) -> None:
    if fmt == "ndjson":
        write_line({"source": source, "valid": result.valid, "outcome": result.to_outcome()})
        return
    status = "valid" if result.valid else "INVALID"
    lines = [f"{source}: {status}"]
    for issue in result.issues:
        lines.append(
            f"  {issue.severity:<11} {issue.code:<6} {issue.expression(result.resource_type)}: {issue.message}"
        )
    sys.stdout.write("\n".join(lines) + "\n")


class _NoProgress:
    def update(self) -> None: ...

    def close(self) -> None: ...


def _progress(paths: list[str]) -> Any:
    if not sys.stderr.isatty():
        return _NoProgress()
    total = 0
    for path in paths:  # a quick count of the lines to come (NDJSON), one per other file
        if path.endswith(".ndjson") and Path(path).is_file():
            with open(path, "rb") as handle:
                total += sum(1 for line in handle if line.strip())
        else:
            total += 1
    if total < 50:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="res", file=sys.stderr)
