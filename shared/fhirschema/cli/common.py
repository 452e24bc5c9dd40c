"""What the subcommands share: package options, input reading, error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

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
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a JSON file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def iter_ndjson(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or InputError) for each non-blank line."""
    handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, InputError(f"{path}:{number}: not JSON ({exc})")
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def write_line(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")
