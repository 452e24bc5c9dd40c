"""`fhirschema.cli.bulk` in one process: serial against `--jobs N`, steady state, no start-up.

The cli_bench corpus written 10x and 30x as NDJSON; the packages loaded once here, one warm pass,
the heap frozen (as the CLI does). Each round, in turn: `bulk` serial (this process pinned to
`--cpu`) on x10 and x30, then `bulk._parallel` with `--jobs` forked workers on x10 and x30 (from
the first unit: no serial phase). x30 - x10 (20 x 897 resources) cancels what a run does once
(the fork, the workers' copy-on-write transient, their exit); those one-offs are printed too, as
the parallel x10 run's CPU minus the serial one's. CPU is this process's plus its reaped workers'
(`getrusage`). Where cli_bench.py's every-core figure moves with start-up (package loading ~2 s of
CPU per run), this one does not; it still moves with the load (cache misses when the CPUs are
time-sliced with other processes), so the load average is printed per round.

    .venv/bin/python bench/bulk_bench.py [--rounds 3] [--jobs 2] [--cpu 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_bench

from fhirschema.cli import bulk
from fhirschema.cli import validate as cli_validate
from fhirschema.context import FhirContext
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator


def _seconds() -> tuple[float, float, float]:
    """(CPU of this process, CPU of its reaped children, wall)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        own.ru_utime + own.ru_stime,
        children.ru_utime + children.ru_stime,
        time.perf_counter(),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=cli_bench.REPO.parent / "shared")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=bulk.default_jobs())
    parser.add_argument("--cpu", type=int, default=1, help="the CPU of the serial runs")
    args = parser.parse_args()

    lines = cli_bench.corpus(args.shared)
    n = 20 * len(lines)
    ctx = FhirContext.from_specs([args.shared / p for p in cli_bench.PACKAGES])
    task = bulk.Task(Validator(ctx, terminology=Terminology(ctx.resource)), (), False)
    out = open(os.devnull, "wb")  # noqa: SIM115  (open for the whole run)

    def emit(done: bulk.Done) -> None:
        out.write(done.output)

    def units(path: Path) -> Iterator[bulk.Unit]:
        return bulk.chunks(cli_validate._inputs([str(path)], {"errors": 0}))

    def run(path: Path, jobs: int) -> tuple[float, float, float]:
        """(parent CPU, workers' CPU, wall) of one run."""
        before = _seconds()
        if jobs == 1:
            for unit in units(path):
                emit(task.run(unit))
        else:
            bulk._parallel(task, units(path), jobs, emit)
        after = _seconds()
        return after[0] - before[0], after[1] - before[1], after[2] - before[2]

    here = os.sched_getaffinity(0)
    ratios, walls, parents, one_offs = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for times in (1, 10, 30):
            files[times] = Path(tmp) / f"corpus-x{times}.ndjson"
            files[times].write_bytes(b"\n".join(lines * times) + b"\n")
        for unit in units(files[1]):  # warm-up: plans, value sets, memos
            emit(task.run(unit))
        gc.collect()
        gc.freeze()
        for round_ in range(args.rounds):
            os.sched_setaffinity(0, {args.cpu})
            s10, s30 = run(files[10], 1), run(files[30], 1)
            os.sched_setaffinity(0, here)
            p10, p30 = run(files[10], args.jobs), run(files[30], args.jobs)
            serial_cpu = n / (s30[0] - s10[0])
            parallel_cpu = n / (sum(p30[:2]) - sum(p10[:2]))
            ratios.append(parallel_cpu / serial_cpu)
            walls.append((s30[2] - s10[2]) / (p30[2] - p10[2]))
            parents.append((p30[0] - p10[0]) / n * 1e6)
            one_offs.append(sum(p10[:2]) - s10[0])
            print(
                f"round {round_ + 1}: serial {serial_cpu:,.0f} res/CPU s, {n / (s30[2] - s10[2]):,.0f} res/s; "
                f"--jobs {args.jobs} {parallel_cpu:,.0f} res/CPU s, {n / (p30[2] - p10[2]):,.0f} res/s; "
                f"per CPU s {ratios[-1]:.2f}, wall {walls[-1]:.2f}x; parent {parents[-1]:.1f} us/res; "
                f"one-offs {one_offs[-1]:.3f} CPU s; load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
            )
    print(
        f"--jobs {args.jobs} / serial, steady state, medians of {args.rounds} rounds: "
        f"{statistics.median(ratios):.2f} per CPU second, {statistics.median(walls):.2f}x wall; "
        f"the parent {statistics.median(parents):.1f} us per resource; the parallel run's one-offs "
        f"{statistics.median(one_offs):.3f} CPU s; load average now {os.getloadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
