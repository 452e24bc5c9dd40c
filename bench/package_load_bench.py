"""How long loading (indexing) each real package takes: `.tgz` read + index, nothing parsed.

    .venv/bin/python bench/package_load_bench.py [--shared ../shared] [--runs 5]

Issue 2 target: hl7.fhir.r4.core#4.0.1 from its .tgz in ≤ 1.5 s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fhirschema.package import load_tgz


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for tgz in sorted((Path(args.shared) / "fhir" / "packages").glob("*.tgz")):
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            package = load_tgz(tgz)
            times.append(time.perf_counter() - started)
        parsed = len(package._parsed)
        print(f"{package.id:<40} {len(package.entries):>5} resources indexed, {parsed} parsed, "
              f"best {min(times):.3f} s, worst {max(times):.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
