"""How two CPU-bound processes scale on this machine: the ceiling for `--jobs 2` (issue 10).

Each probe runs a fixed time in a process pinned to one CPU (`os.sched_setaffinity`) and counts
its work: alone (one process, CPU 1), then two at once (CPUs 0 and 1), in turn for `--rounds`.
The rate of a process when two run, over its rate alone, is what the machine gives a second
process; if the validator gets ~0.76 of its alone rate there, that is the cache / memory /
host, not `fhirschema.cli.bulk`.

- `loop`: a pure-Python loop (integer arithmetic and a small dict: the interpreter, little memory);
- `validate`: the engine in process, packages loaded once per process (as separate processes:
  nothing shared), the corpus of cli_bench.py validated over and over (`jsoninput.validate`,
  what the CLI does per line; terminology on, invariants off);
- `forked`: the same, but the packages are loaded once and the two processes forked from it
  after `gc.freeze()`, as bulk.py's workers are (copy-on-write pages shared), to tell the fork's
  cost from the machine's.

Printed per process: work per wall second and per CPU second (`time.process_time`), and the
minor page faults (`ru_minflt`) while measuring; the load average before each round.

    .venv/bin/python bench/cores_probe.py [--seconds 8] [--rounds 3] [--probes loop,validate,forked] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_bench

Work = Callable[[], int]  # does some work, returns how many units it did


def loop_work() -> Work:
    def work() -> int:
        table: dict[int, int] = {}
        acc = 0
        for i in range(20_000):
            acc = (acc * 31 + i) & 0xFFFF
            table[acc & 1023] = i
        return 1  # one unit: 20,000 iterations

    return work


def validate_work(shared: Path) -> Work:
    from fhirschema import jsoninput
    from fhirschema.context import FhirContext
    from fhirschema.terminology import Terminology
    from fhirschema.validator import Validator

    ctx = FhirContext.from_specs([shared / p for p in cli_bench.PACKAGES])
    validator = Validator(ctx, terminology=Terminology(ctx.resource))
    lines = cli_bench.corpus(shared)
    validate = jsoninput.validate

    def work() -> int:
        for line in lines[:64]:
            validate(validator, line)
        lines.extend(lines[:64])  # rotate: the whole corpus in turn
        del lines[:64]
        return 64

    for _ in range(len(lines) // 64 + 1):  # warm-up: one pass (plans, value sets, memos)
        work()
    return work


def measure(work: Work, cpu: int, seconds: float) -> dict[str, float]:
    os.sched_setaffinity(0, {cpu})
    warm = time.perf_counter()
    while time.perf_counter() - warm < 1.0:  # not timed: a forked process's copy-on-write transient
        work()
    units = 0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, c0 = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds:
        units += work()
    cpu_s = time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "per_s": units / elapsed,
        "per_cpu_s": units / cpu_s,
        "cpu_share": cpu_s / elapsed,
        "minflt": r1.ru_minflt - r0.ru_minflt,
    }


def run_forked(make: Callable[[], Work], cpus: list[int], seconds: float) -> list[dict[str, float]]:
    """`make()` once here, then one forked process per CPU measuring at the same moment; the
    heap frozen first, as bulk.py does (its first second in `measure`, the copy-on-write
    transient, is not timed)."""
    work = make()
    gc.collect()
    gc.freeze()
    children = []
    for cpu in cpus:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            result = measure(work, cpu, seconds)
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        children.append((pid, read))
    results = []
    for pid, read in children:
        with os.fdopen(read, "rb") as pipe:
            results.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    gc.unfreeze()
    return results


def run_separate(make: Callable[[], Work], cpus: list[int], seconds: float) -> list[dict[str, float]]:
    """One process per CPU, each making its own work (nothing shared), started together."""
    children = []
    go_read, go_write = os.pipe()
    for cpu in cpus:
        ready_read, ready_write = os.pipe()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.close(ready_read)
            os.close(go_write)
            os.sched_setaffinity(0, {cpu})
            work = make()  # its own packages and corpus: nothing shared with the other process
            os.write(ready_write, b"r")
            os.read(go_read, 1)
            result = measure(work, cpu, seconds)
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        os.close(ready_write)
        children.append((pid, read, ready_read))
    for _, _, ready in children:
        os.read(ready, 1)
        os.close(ready)
    os.write(go_write, b"g" * len(cpus))
    results = []
    for pid, read, _ in children:
        with os.fdopen(read, "rb") as pipe:
            results.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    os.close(go_read)
    os.close(go_write)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=cli_bench.REPO.parent / "shared")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", default="loop,validate,forked")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    makers: dict[str, Callable[[], Work]] = {
        "loop": loop_work,
        "validate": lambda: validate_work(args.shared),
    }
    ratios: dict[str, list[float]] = {}
    cpu_ratios: dict[str, list[float]] = {}
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for probe in args.probes.split(","):
            make = makers["validate" if probe == "forked" else probe]
            load = os.getloadavg()[0]
            if probe == "forked":
                alone = run_forked(make, [1], args.seconds)
                both = run_forked(make, [0, 1], args.seconds)
            else:
                alone = run_separate(make, [1], args.seconds)
                both = run_separate(make, [0, 1], args.seconds)
            ratio = statistics.mean(r["per_s"] for r in both) / alone[0]["per_s"]
            cpu_ratio = statistics.mean(r["per_cpu_s"] for r in both) / alone[0]["per_cpu_s"]
            ratios.setdefault(probe, []).append(ratio)
            cpu_ratios.setdefault(probe, []).append(cpu_ratio)
            rows.append({"round": round_ + 1, "probe": probe, "load": load, "alone": alone, "both": both})
            print(
                f"round {round_ + 1} {probe:<8} load {load:4.1f}: alone {alone[0]['per_s']:8.1f}/s "
                f"({alone[0]['per_cpu_s']:8.1f}/CPU s, {alone[0]['cpu_share']:.0%} CPU, {alone[0]['minflt']} minflt); "
                "two at once "
                + ", ".join(
                    f"{r['per_s']:8.1f}/s ({r['per_cpu_s']:8.1f}/CPU s, {r['cpu_share']:.0%}, {r['minflt']} minflt)"
                    for r in both
                )
                + f"; per process {ratio:.2f} of alone (per CPU s {cpu_ratio:.2f})",
                file=sys.stderr,
            )
    summary = {
        probe: {"both_over_alone": statistics.median(v), "per_cpu_s": statistics.median(cpu_ratios[probe])}
        for probe, v in ratios.items()
    }
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
        return 0
    for probe, s in summary.items():
        print(
            f"{probe:<8}: two at once, each at {s['both_over_alone']:.2f} of alone per wall second "
            f"({s['per_cpu_s']:.2f} per CPU second); medians of {args.rounds} rounds"
        )
    print(f"load average now {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
