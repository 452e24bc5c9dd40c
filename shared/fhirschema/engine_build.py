"""Which validator runs: the modules compiled by mypyc, or their Python source.

`make engine` (scripts/build_engine.py) compiles the validator and the native FHIRPath subset to
C extensions that sit beside the .py files they were built from, and Python imports an extension
before a .py of the same name. Two cases must run the source instead:

- FHIRSCHEMA_PURE_PYTHON=1: debugging, or checking that both builds give the same results;
- a stale build (a .py edited since `make engine`; the build records its sources' digests in
  `fhirschema/.compiled`), which would otherwise run old code silently.

Both give identical results; the compiled build is about three times faster.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

PACKAGE = "fhirschema"
_DIR = Path(__file__).parent
MANIFEST = _DIR / ".compiled"


def stale_modules() -> list[str]:
    """Sources that differ from those the extensions were built from, and the compiled library
    when it is not the build the manifest describes ([] for a wheel install, which ships no
    manifest: its sources and extensions come from one build)."""
    try:
        built = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(built, dict):
        return []
    stale = []
    library = built.get("library") or {}
    try:
        stat = (_DIR / str(library.get("file"))).stat()
        same = stat.st_size == library.get("size") and stat.st_mtime_ns == library.get("mtime_ns")
    except OSError:
        same = False
    if not same:
        stale.append(str(library.get("file") or "_compiled__mypyc"))
    for name, digest in (built.get("sources") or {}).items():
        try:
            if hashlib.sha256((_DIR / name).read_bytes()).hexdigest() != digest:
                stale.append(name)
        except OSError:
            stale.append(name)
    return sorted(stale)


class _SourceFinder:
    """Finds the modules of `fhirschema` as .py files only."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: ModuleType | None = None) -> object:
        if not name.startswith(PACKAGE + "."):
            return None
        where = _DIR.joinpath(*name.split(".")[1:-1])
        finder = importlib.machinery.FileFinder(
            str(where), (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        )
        return finder.find_spec(name)


def select() -> None:
    """Called once on `import fhirschema`, before anything imports the validator."""
    if _SourceFinder in sys.meta_path or not built():
        return
    if os.environ.get("FHIRSCHEMA_PURE_PYTHON", "") not in ("", "0"):
        sys.meta_path.insert(0, _SourceFinder)  # type: ignore[arg-type]
        return
    stale = stale_modules()
    if stale:
        warnings.warn(
            f"the compiled validator was built from other versions of {', '.join(stale)}: running "
            "the Python source instead (about 3x slower). Rebuild it with `make engine`.",
            stacklevel=2,
        )
        sys.meta_path.insert(0, _SourceFinder)  # type: ignore[arg-type]


def built() -> bool:
    """True when compiled extensions are installed (whether or not they are in use)."""
    return any(_DIR.glob("_compiled__mypyc*"))


def compiled() -> bool:
    """True when the validator in use is the mypyc build."""
    from fhirschema.validator import walk

    return not walk.__file__.endswith(".py")
