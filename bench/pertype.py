"""Where validate_bench's in-process time goes, per resourceType (wall time, best of N).

Same corpus and validator as bench/validate_bench.py (R4 spec examples + US Core 6.1.0 examples,
r4.core + US Core loaded, terminology on, invariants off). After one untimed warm-up pass over the
whole corpus (plans compiled, memos filled), each type's resources are validated `--runs` times,
types round robin; the best pass of each type is reported, with its share of the sum.

    .venv/bin/python bench/pertype.py [--runs 7] [--top 20] [--json]
    # another tree's engine, this script (e.g. a worktree of an older commit):
    ../wt-old/.venv/bin/python bench/pertype.py --types Bundle,Patient

Instruction counts (deterministic where these wall times are not): bench/callgrind_corpus.py
--only Bundle (or --per-type).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from validate_bench import load_context, load_corpus, make_validator  # bench/ is sys.path[0]

REPO = Path(__file__).resolve().parent.parent


def by_type(shared: Path) -> dict[str, list[dict[str, Any]]]:
    """The corpus's resources grouped by resourceType, in validate_bench's order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for resources in load_corpus(shared).values():
        for r in resources:
            groups[str(r.get("resourceType"))].append(r)
    return dict(groups)


def validate_all(validate: Any, resources: list[dict[str, Any]]) -> None:
    for r in resources:
        try:
            validate(r)
        except Exception:
            pass  # validate_bench counts crashes in its warm-up; here only time matters


def per_type(validate: Any, groups: dict[str, list[dict[str, Any]]], runs: int) -> dict[str, float]:
    """Best seconds of one pass over each type's resources, types round robin per run."""
    best = dict.fromkeys(groups, float("inf"))
    for _ in range(runs):
        for name, resources in groups.items():
            gc.collect()
            t0 = time.perf_counter()
            validate_all(validate, resources)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="reference data dir")
    ap.add_argument("--runs", type=int, default=7, help="timed passes per type (best is reported)")
    ap.add_argument("--types", default="", help="comma-separated resourceTypes (default: all)")
    ap.add_argument("--top", type=int, default=0, help="print only the N costliest types")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    shared = args.shared.resolve()

    groups = by_type(shared)
    validate = make_validator(shared, terminology=True, invariants=False, ctx=load_context(shared)).validate
    for resources in groups.values():  # the warm-up: every plan compiled, as in validate_bench
        validate_all(validate, resources)
    # What is left at start-up moved out of the collector's sight (as the services do): the
    # gc.collect() before each pass then costs ~nothing instead of a walk over every plan.
    gc.collect()
    gc.freeze()
    if args.types:
        wanted = args.types.split(",")
        groups = {t: groups[t] for t in wanted if t in groups}
    best = per_type(validate, groups, args.runs)
    total = sum(best.values())
    rows = sorted(best.items(), key=lambda kv: -kv[1])
    if args.top:
        rows = rows[: args.top]
    if args.json:
        out = {name: {"count": len(groups[name]), "best_seconds": round(s, 6)} for name, s in rows}
        print(json.dumps({"total_seconds": round(total, 6), "types": out}, indent=1))
        return 0
    print(f"{'type':<28}{'count':>6}{'best ms':>10}{'us/res':>9}{'share':>8}")
    for name, s in rows:
        n = len(groups[name])
        print(f"{name:<28}{n:>6}{s * 1e3:>10.2f}{s * 1e6 / n:>9.1f}{s / total:>8.1%}")
    print(f"{'sum':<28}{sum(len(g) for g in groups.values()):>6}{total * 1e3:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
