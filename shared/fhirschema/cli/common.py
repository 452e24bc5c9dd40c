"""What the subcommands share: package options, input reading, error reporting."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from fhirschema import jsoninput
from fhirschema.cache import ENV_VAR, PackageCache


class InputError(Exception):
    """One input cannot be used; the message names it and says why."""


def add_package_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--package",
        "-p",
        action="append",
        default=[],
        metavar="SPEC",
        help="a FHIR package: .tgz file, unpacked folder, or name#version from the package cache (repeatable)",
    )
    add_cache_option(parser)


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help=f"package cache folder (default: ${ENV_VAR} or ~/.fhir/packages)",
    )


def cache_from(args: argparse.Namespace) -> PackageCache:
    return PackageCache(args.cache)


def error(command: str, message: str) -> None:
    print(f"fhirschema {command}: {message}", file=sys.stderr)


def read_json_file(path: str) -> Any:
    """Parse one JSON file (`-` is stdin); raises InputError with the reason."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(read_error(path, exc)) from None
    try:
        return jsoninput.parse(data).value
    except jsoninput.JsonInputError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def read_error(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(exc, IsADirectoryError):
        return f"{path}: is a folder, expected a JSON file"
    return f"{path}: cannot read ({exc.strerror})"


def write_line(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")
