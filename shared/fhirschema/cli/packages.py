"""`fhirschema packages install SPEC...` / `fhirschema packages list`: the local package cache."""

from __future__ import annotations

import argparse
import sys

from fhirschema.cli.common import add_cache_option, cache_from, error
from fhirschema.package import PackageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("packages", help="manage the local FHIR package cache")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="install package tarball(s) into the cache")
    install.add_argument("specs", nargs="+", metavar="TGZ", help="package .tgz file(s)")
    install.add_argument("--force", action="store_true", help="replace an installed copy")
    add_cache_option(install)
    listing = actions.add_parser("list", help="list installed packages")
    add_cache_option(listing)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cache = cache_from(args)
    if args.action == "list":
        for name, version in cache.list():
            print(f"{name}#{version}")
        return 0
    failures = 0
    for spec in args.specs:
        try:
            package = cache.install(spec, force=args.force)
        except PackageError as exc:
            error("packages install", str(exc))
            failures += 1
            continue
        print(
            f"installed {package.id} ({len(package.entries)} resources) in {cache.folder(package.name, package.version)}"
        )
        for warning in package.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 1 if failures else 0
