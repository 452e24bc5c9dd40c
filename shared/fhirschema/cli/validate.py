"""`fhirschema validate [--package SPEC]... [--profile URL]... [--supporting FILE]... [--jobs N] PATH...`

A fixed contract (other tools depend on it). One NDJSON line per input resource, in input order:
`{"source": "<path>" | "<path>:<line>", "valid": bool, "outcome": <OperationOutcome>}`. Input
that is not JSON is a result too (`valid: false`, a fatal issue with its line and column).
Exit 0 all valid, 1 any invalid, 2 usage or I/O error (a file that cannot be read, a worker process
that died).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fhirschema import jsoninput
from fhirschema.cli import bulk, forked, ndjson
from fhirschema.cli.common import (
    InputError,
    add_package_options,
    cache_from,
    error,
    read_error,
    read_json_file,
)
from fhirschema.context import FhirContext
from fhirschema.package import PackageError
from fhirschema.validator import Validator

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
        "--jobs", "-j", type=_jobs, default=None, metavar="N",
        help="processes validating a large input (default: one per core; output keeps input order)",
    )  # fmt: skip
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="JSON resource file, .ndjson file, or - for stdin"
    )
    parser.set_defaults(run=run)


def _jobs(text: str) -> int:
    jobs = int(text)
    if jobs < 1:
        raise argparse.ArgumentTypeError("--jobs must be at least 1")
    return jobs


def run(args: argparse.Namespace) -> int:
    try:
        context = _context(args)
    except (PackageError, InputError) as exc:
        error("validate", str(exc))
        return 2
    task = bulk.Task(_validator(context, args), tuple(args.profile), args.format == "text")
    progress = _progress(args.paths)
    counts = {"invalid": 0, "errors": 0}
    write = sys.stdout.buffer.write

    def emit(done: bulk.Done) -> None:
        write(done.output)
        for message in done.errors:
            error("validate", message)
        counts["invalid"] += done.invalid
        counts["errors"] += len(done.errors)
        progress.update(done.items)

    try:
        bulk.run(task, _inputs(args.paths, counts), args.jobs or bulk.default_jobs(), emit)
    except forked.WorkerDied as exc:
        error("validate", str(exc))
        return 2
    finally:
        progress.close()
    if counts["errors"]:
        return 2
    return 1 if counts["invalid"] else 0


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


def _inputs(paths: list[str], counts: dict[str, int]) -> Iterator[bulk.Item | ndjson.Lines]:
    """The inputs, streamed: an NDJSON file is never held whole. An NDJSON file that cannot be
    opened is reported here; a JSON file is read by whoever validates it."""
    for path in paths:
        if path == "-":
            yield from _stdin(sys.stdin.buffer.read())
        elif path.endswith(".ndjson"):
            try:
                handle = open(path, "rb")  # noqa: SIM115
            except OSError as exc:
                error("validate", read_error(path, exc))
                counts["errors"] += 1
                continue
            with handle:
                yield from ndjson.runs(path, handle)
        else:
            yield path, None


def _stdin(data: bytes) -> Iterator[bulk.Item]:
    """One JSON document, or NDJSON when the whole is not JSON but its first line is."""
    lines = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    if len(lines) > 1:
        try:
            jsoninput.parse(data)
        except jsoninput.JsonInputError:
            try:
                jsoninput.parse(lines[0][1])
            except jsoninput.JsonInputError:
                pass
            else:
                for number, line in lines:
                    yield f"-:{number}", line
                return
    yield "-", data


class _NoProgress:
    def update(self, n: int = 1) -> None: ...

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
