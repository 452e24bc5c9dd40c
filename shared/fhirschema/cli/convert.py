"""`fhirschema convert [--package SPEC]... [FILE...]` → NDJSON FHIRSchemas on stdout.

Other tools depend on this name and output shape: one FHIRSchema per line.
"""

from __future__ import annotations

import argparse
from typing import Any

from fhirschema.cli.common import (
    InputError,
    add_package_options,
    cache_from,
    error,
    read_json_file,
    write_line,
)
from fhirschema.converter import ConversionError, convert
from fhirschema.package import PackageError, load_package


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert StructureDefinitions to FHIRSchema (NDJSON on stdout)",
        description="Convert StructureDefinition JSON files (or Bundles of them), or with no FILE every "
        "StructureDefinition in the given packages, to FHIRSchema: one JSON object per line on stdout.",
    )
    add_package_options(parser)
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="StructureDefinition JSON file(s); - for stdin"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.files and not args.package:
        error("convert", "nothing to convert: give StructureDefinition FILEs or --package SPEC")
        return 2
    failures = 0
    for path in args.files:
        try:
            failures += _convert_file(path)
        except InputError as exc:
            error("convert", str(exc))
            failures += 1
    if not args.files:
        cache = cache_from(args)
        for spec in args.package:
            try:
                package = load_package(spec, cache)
            except PackageError as exc:
                error("convert", str(exc))
                failures += 1
                continue
            for warning in package.warnings:
                error("convert", f"warning: {warning}")
            for entry in package.entries:
                if entry.resourceType != "StructureDefinition":
                    continue
                try:
                    write_line(convert(package.read(entry), package=package))
                except (PackageError, ConversionError) as exc:
                    error("convert", f"{package.id}: {entry.filename}: {exc}")
                    failures += 1
    return 1 if failures else 0


def _convert_file(path: str) -> int:
    data = read_json_file(path)
    items: list[tuple[str, Any]]
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        items = [
            (f"{path}: entry[{i}]", e.get("resource") if isinstance(e, dict) else None)
            for i, e in enumerate(data.get("entry") or [])
        ]
        items = [
            (where, r)
            for where, r in items
            if isinstance(r, dict) and r.get("resourceType") == "StructureDefinition"
        ]
        if not items:
            raise InputError(f"{path}: a Bundle without StructureDefinitions")
    else:
        items = [(path, data)]
    failures = 0
    for where, sd in items:
        try:
            write_line(convert(sd))
        except ConversionError as exc:
            error("convert", f"{where}: {exc}")
            failures += 1
    return failures
