"""Where the CLI's CPU goes with `--jobs N` (issue 10): the parent against its forked workers.

`fhirschema validate --jobs N` on the cli_bench corpus written `--small` and `--big` times, as a
whole process (stdout a pipe this script drains, as cli_long_bench.py's), and `--jobs 1` pinned to
one CPU for comparison. Inside the CLI a few probes (this script's wrapper, not the CLI's code):
each worker's own rusage when it is reaped (`os.wait4`), the parent's rusage at the fork and at
the end, and the bytes the parent wrote to and read from the pipes. Big - small cancels start-up,
the fork and the tail, so the per-resource figures are the steady state:

- parent us/res: the parent's CPU after the fork (reading the file, sending units, taking
  results, writing stdout), per resource;
- workers us/res: the workers' CPU per resource, against `--jobs 1`'s CPU per resource;
- minflt: minor page faults per worker (copy-on-write of the frozen heap, fresh buffers);
- busy: the big run's workers' CPU over (jobs x their wall): what of the CPUs they had;
- blocked: big - small, wall seconds a worker waited to read its next unit (its queue empty);
- context switches (voluntary and not) of the parent after the fork and its workers, and the bytes
  they read (files and pipes, /proc/<pid>/io rchar), per resource.

    .venv/bin/python bench/cli_cpu_split.py [--small 20] [--big 80] [--rounds 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
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

# Runs the CLI in this interpreter with the probes; writes what they saw as JSON to argv[1].
WRAPPER = r"""
import json, os, resource, sys, time
from fhirschema import cli
from fhirschema.cli import forked

out_path = sys.argv[1]
seen = {"workers": [], "sent": 0, "received": 0, "fork": None}

def _cpu(ru):
    return {"cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime, "minflt": ru.ru_minflt,
            "switches": ru.ru_nvcsw + ru.ru_nivcsw, "read": _read_bytes()}

def _read_bytes():  # what this process has read so far (files and pipes), /proc/self/io's rchar
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])

wait4 = os.wait4
def waitpid(pid, options):
    # rchar counts a reaped child's reads as the parent's: the parent's own, before any is reaped
    seen.setdefault("read_before_reaping", _read_bytes())
    got, status, ru = wait4(pid, options)
    mine = json.load(open(f"{out_path}.{got}"))
    seen["workers"].append({**_cpu(ru), **mine, "wall": time.monotonic() - seen["fork"]["at"]})
    return got, status
os.waitpid = waitpid

start, write, read, serve = forked._start, forked._write, forked._read, forked._serve
parent = os.getpid()
waited = [0.0]  # in a worker: wall seconds blocked reading its next unit
def _start(jobs, work):
    seen["fork"] = {**_cpu(resource.getrusage(resource.RUSAGE_SELF)), "at": time.monotonic()}
    return start(jobs, work)
def _write(fd, data):
    seen["sent"] += len(data)
    write(fd, data)
def _read(fd, size):
    if os.getpid() == parent:
        got = read(fd, size)
        seen["received"] += len(got or b"")
        return got
    t = time.monotonic()
    got = read(fd, size)
    if size == forked.LANE.size:
        waited[0] += time.monotonic() - t
    return got
def _serve(work, tasks, results):
    try:
        serve(work, tasks, results)
    finally:
        with open(f"{out_path}.{os.getpid()}", "w") as handle:
            json.dump({"waited": waited[0], "read": _read_bytes()}, handle)
forked._start, forked._write, forked._read, forked._serve = _start, _write, _read, _serve

code = cli.main(sys.argv[2:])
sys.stdout.flush()
seen["self"] = _cpu(resource.getrusage(resource.RUSAGE_SELF))
with open(out_path, "w") as handle:
    json.dump(seen, handle)
sys.exit(code)
"""


def run(args: list[str], pin: bool, record: Path) -> dict:
    prefix = ["taskset", "-c", "1"] if pin else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = perf_counter()
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", WRAPPER, str(record), "validate", *args],
        capture_output=True,
        check=False,
    )
    wall = perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(proc.stderr.decode())
    seen = json.loads(record.read_text())
    for mine in record.parent.glob(record.name + ".*"):
        mine.unlink()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {**seen, "wall": wall, "total": cpu, "output": len(proc.stdout)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=cli_bench.REPO.parent / "shared")
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--big", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    lines = cli_bench.corpus(args.shared)
    n = (args.big - args.small) * len(lines)
    options = [f"--package={args.shared / p}" for p in cli_bench.PACKAGES] + ["--no-invariants"]
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "seen.json"
        files = {}
        for times in (args.small, args.big):
            files[times] = Path(tmp) / f"corpus-x{times}.ndjson"
            files[times].write_bytes(b"\n".join(lines * times) + b"\n")
        for round_ in range(args.rounds):
            one = [run([*options, "--jobs=1", str(files[t])], True, record) for t in (args.small, args.big)]
            par = [
                run([*options, f"--jobs={args.jobs}", str(files[t])], False, record)
                for t in (args.small, args.big)
            ]

            def parent(r: dict, key: str = "cpu") -> float:
                return r["self"][key] - r["fork"][key]

            def workers(r: dict, key: str = "cpu") -> float:
                return sum(w[key] for w in r["workers"])

            row = {
                "one_us": (one[1]["total"] - one[0]["total"]) / n * 1e6,
                "one_rate": n / (one[1]["wall"] - one[0]["wall"]),
                "parent_us": (parent(par[1]) - parent(par[0])) / n * 1e6,
                "workers_us": (workers(par[1]) - workers(par[0])) / n * 1e6,
                "total_us": (par[1]["total"] - par[0]["total"]) / n * 1e6,
                "rate": n / (par[1]["wall"] - par[0]["wall"]),
                "minflt": workers(par[1], "minflt") / args.jobs,
                "minflt_small": workers(par[0], "minflt") / args.jobs,
                "sys_us": (workers(par[1], "sys") - workers(par[0], "sys")) / n * 1e6,
                "busy": workers(par[1]) / (args.jobs * max(w["wall"] for w in par[1]["workers"])),
                "pipe_bytes": (par[1]["sent"] + par[1]["received"] - par[0]["sent"] - par[0]["received"]) / n,
                "out_bytes": (par[1]["output"] - par[0]["output"]) / n,
                "waited": (workers(par[1], "waited") - workers(par[0], "waited"))
                / max(1, len(par[1]["workers"])),
                "switches": (
                    parent(par[1], "switches")
                    - parent(par[0], "switches")
                    + workers(par[1], "switches")
                    - workers(par[0], "switches")
                )
                / n
                * 1000,
                "read": (
                    par[1]["read_before_reaping"]
                    - par[1]["fork"]["read"]
                    - par[0]["read_before_reaping"]
                    + par[0]["fork"]["read"]
                    + workers(par[1], "read")
                    - workers(par[0], "read")
                )
                / n,
            }
            rows.append(row)
            print(
                f"round {round_ + 1}: --jobs 1 {row['one_us']:.1f} us/res CPU, {row['one_rate']:,.0f} res/s; "
                f"--jobs {args.jobs}: parent {row['parent_us']:.2f} us/res, workers {row['workers_us']:.1f} "
                f"(sys {row['sys_us']:.2f}), all {row['total_us']:.1f} us/res CPU, {row['rate']:,.0f} res/s "
                f"(ratio {row['rate'] / row['one_rate']:.2f}); worker minflt {row['minflt_small']:,.0f} small, {row['minflt']:,.0f} big; busy "
                f"{row['busy']:.3f}, blocked for a unit {row['waited']:.3f} s/worker; context switches {row['switches']:.1f} per 1000 res; read {row['read']:,.0f} B/res; pipes {row['pipe_bytes']:.1f} B/res, stdout {row['out_bytes']:.0f} B/res; "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    keys = ("one_us", "parent_us", "workers_us", "total_us", "busy")
    print("medians: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
