"""The `fhirschema` console script: a thin dispatcher over one module per subcommand.

Each subcommand module exposes `add_parser(subparsers)` and `run(args) -> int`.
Exit codes: 0 success, 1 some input invalid / failed, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("convert", "validate", "packages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhirschema",
        description="FHIRSchema engine: convert StructureDefinitions, validate resources, manage FHIR packages.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the version and which build of the validator runs"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"fhirschema.cli.{name}").add_parser(sub)
    return parser


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from fhirschema import __version__, engine_build

        build = "compiled (mypyc)" if engine_build.compiled() else "Python source (`make engine` compiles it)"
        print(f"fhirschema {__version__}; validator: {build}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fhirschema convert ... | head` closes stdout early; that is not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
