"""The command line of the scripts that generate documents under docs/ (write, or --check)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(out: Path, render: Callable[[], str], doc: str | None) -> int:
    """`--check`: exit 1 when `out` differs from what `render` makes now; else write it."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the committed file is stale")
    text = render()
    if parser.parse_args().check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0
