"""Compile the validator with mypyc, in place: `make engine` (docs/architecture.md, "Compiled engine").

The same .py files run interpreted when not compiled, so the engine's semantics stay in one
place; compiled, validation is about three times faster. `setup.py` uses the same list when a
wheel is built (the Docker images). Python imports an extension before the .py beside it, so the
build records its sources' digests in `fhirschema/.compiled`, and an import whose sources no
longer match runs the .py files instead (`fhirschema.engine_build`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent / "shared"
# Everything `Validator.validate` runs per resource: one mypyc group, so calls between these
# modules are direct C calls.
COMPILED = [
    "fhirschema/cli/outcome.py",  # not the validator: the CLI's outcome of an input with findings
    "fhirschema/fastpath/checks.py",
    "fhirschema/fastpath/operators.py",
    "fhirschema/fastpath/parser.py",
    "fhirschema/validator/bindings.py",
    "fhirschema/validator/bundles.py",
    "fhirschema/validator/companions.py",
    "fhirschema/validator/constraints.py",
    "fhirschema/validator/engine.py",
    "fhirschema/validator/extensions.py",
    "fhirschema/validator/findings.py",
    "fhirschema/validator/issues.py",
    "fhirschema/validator/matching.py",
    "fhirschema/validator/narrative.py",
    "fhirschema/validator/plans.py",
    "fhirschema/validator/primitives.py",
    "fhirschema/validator/references.py",
    "fhirschema/validator/slices.py",
    "fhirschema/validator/temporal.py",
    "fhirschema/validator/values.py",
    "fhirschema/validator/walk.py",
    "fhirschema/validator/walkconfig.py",
]
# Not compiled, but mypyc builds their signatures into the compiled modules: part of the manifest.
DEPENDS = ["fhirschema/fastpath/__init__.py", "fhirschema/slicing.py", "fhirschema/validator/__init__.py"]
# The group's shared library, fhirschema/_compiled__mypyc. Package inits stay Python: a compiled
# package init cannot import a compiled group that lives inside it.
GROUP = "fhirschema._compiled"


def extensions(prefix: str = "") -> list:
    from mypyc.build import mypycify

    return mypycify(
        ["--ignore-missing-imports", *(prefix + path for path in COMPILED)], opt_level="3", group_name=GROUP
    )


def main() -> int:
    from setuptools import setup

    os.chdir(SHARED)
    for old in (SHARED / "fhirschema").rglob("*.so"):
        old.unlink()  # a failed build must not leave a stale half behind
    setup(name="fhirschema-engine", ext_modules=extensions(), script_args=["-q", "build_ext", "--inplace"])
    # What the extensions were built from: an edited source makes them stale (fhirschema.engine_build).
    # ... and which build it describes (a manifest beside another build vouches for nothing).
    library = next((SHARED / "fhirschema").glob("_compiled__mypyc*"))
    stat = library.stat()
    manifest = {
        "library": {"file": library.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "sources": {path.removeprefix("fhirschema/"): _digest(SHARED / path) for path in COMPILED + DEPENDS},
    }
    (SHARED / "fhirschema" / ".compiled").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
