"""The CLI on one core against every core, on larger files than cli_bench.py (issue 10, "Speed").

cli_bench.py's every-core difference (x40 - x20) is ~0.5 s of wall on an idle machine: the
machine's own swings (the one-core rate moved 14,000-20,000 res/s from round to round at load
~1) are as large. Here both sides run the corpus written `--small` and `--big` times (default 20
and 80: ~3 s of difference on one core), `--jobs 1` pinned to one CPU and the default jobs
unpinned, in turn, and the steady-state rate is (big - small) * n / (t_big - t_small).

    .venv/bin/python bench/cli_long_bench.py [--small 20] [--big 80] [--rounds 4] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_bench


def run(args: list[str], pin: bool) -> tuple[float, float]:
    """(wall s, CPU s of the CLI and its workers)."""
    prefix = ["taskset", "-c", "1"] if pin else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = perf_counter()
    subprocess.run([*prefix, str(cli_bench.CLI), "validate", *args], capture_output=True, check=False)
    wall = perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=cli_bench.REPO.parent / "shared")
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--big", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    lines = cli_bench.corpus(args.shared)
    count = (args.big - args.small) * len(lines)
    options = [f"--package={args.shared / p}" for p in cli_bench.PACKAGES] + ["--no-invariants"]
    one: list[float] = []
    every: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for times in (args.small, args.big):
            files[times] = Path(tmp) / f"corpus-x{times}.ndjson"
            files[times].write_bytes(b"\n".join(lines * times) + b"\n")
        for round_ in range(args.rounds):
            o = [run([*options, "--jobs=1", str(files[t])], True) for t in (args.small, args.big)]
            e = [run([*options, str(files[t])], False) for t in (args.small, args.big)]
            one.append(count / (o[1][0] - o[0][0]))
            every.append(count / (e[1][0] - e[0][0]))
            print(
                f"round {round_ + 1}: one core {one[-1]:,.0f} res/s ({count / (o[1][1] - o[0][1]):,.0f}/CPU s), "
                f"every core {every[-1]:,.0f} res/s ({count / (e[1][1] - e[0][1]):,.0f}/CPU s), "
                f"ratio {every[-1] / one[-1]:.2f}; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    ratios = sorted(e / o for e, o in zip(every, one, strict=True))
    print(
        f"medians of {args.rounds} rounds: one core {statistics.median(one):,.0f} res/s, every core "
        f"{statistics.median(every):,.0f} res/s; every / one per round {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f}; target >= {cli_bench.TARGET_ALL_CORES}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
