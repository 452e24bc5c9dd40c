"""Deterministic cost of the in-process validator: callgrind instruction counts (Ir).

Wall time on the shared 2-CPU machine moves by 2x with the load; instruction counts do not. This
validates validate_bench's corpus (R4 spec examples against R4 core, US Core 6.1.0 examples
against their meta.profile; terminology on, invariants off by default), Bundles left out unless
asked for, under `valgrind --tool=callgrind`, and counts only the measured passes: the packages
are loaded and every resource validated once (plans compiled, caches warm) with callgrind's
instrumentation off; the script then turns it on itself (`callgrind_control -i on <pid>`), runs
`--passes` passes, and turns it off.

    .venv/bin/python bench/callgrind_corpus.py [--passes 2] [--only Bundle] [--exclude Bundle]
        [--no-terminology] [--invariants] [--per-type] [--top 40] [--out FILE]

Run it with another checkout's venv (the script needs nothing from this tree but the engine's
public API) to compare trees: `/work/other/.venv/bin/python bench/callgrind_corpus.py`.
It prints the Ir per resource, and with --top the costliest functions (callgrind_annotate,
inclusive), where mypyc's C functions (CPyDef_<module>___<name>) show the per-rule costs.
`--per-type` runs one callgrind per resource type (slow) and prints Ir per resource of each.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
R4_CORE = "fhir/packages/hl7.fhir.r4.core#4.0.1.tgz"
US_CORE = "fhir/packages/hl7.fhir.us.core#6.1.0.tgz"
CORPORA = ("fhir/examples/r4-spec", "fhir/examples/hl7.fhir.us.core#6.1.0")
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


def corpus(shared: Path, only: set[str], exclude: set[str]) -> list[dict[str, Any]]:
    out = []
    for rel in CORPORA:
        for p in sorted((shared / rel).glob("*.json")):
            r = orjson.loads(p.read_bytes())
            kind = r.get("resourceType") if isinstance(r, dict) else None
            if (not only or kind in only) and kind not in exclude:
                out.append(r)
    return out


def inside(args: argparse.Namespace) -> None:
    """Runs under callgrind, instrumentation off until the measured passes."""
    from fhirschema.context import FhirContext
    from fhirschema.invariants import Invariants
    from fhirschema.terminology import Terminology
    from fhirschema.validator import Validator

    shared = args.shared.resolve()
    resources = corpus(shared, set(args.only), set(args.exclude))
    ctx = FhirContext.from_specs([shared / US_CORE, shared / R4_CORE], with_dependencies=False)
    validator = Validator(
        ctx,
        invariants=Invariants() if args.invariants else None,
        terminology=None if args.no_terminology else Terminology(ctx.resource),
    )
    validate = validator.validate
    valid = 0
    for r in resources:  # warm-up: plans and verdicts cached, as in a long-running validator
        try:
            valid += bool(validate(r).valid)
        except Exception:  # a crash is counted in validate_bench, not here
            continue
    control = shutil.which("callgrind_control") or "callgrind_control"
    pid = str(os.getpid())
    subprocess.run([control, "-i", "on", pid], check=True, stdout=subprocess.DEVNULL)
    for _ in range(args.passes):
        for r in resources:
            try:
                validate(r)
            except Exception:
                continue
    subprocess.run([control, "-i", "off", pid], check=True, stdout=subprocess.DEVNULL)
    print(orjson.dumps({"resources": len(resources), "valid": valid}).decode())


def measure(args: argparse.Namespace, only: list[str], out: Path) -> tuple[int, int, int]:
    """(Ir, resources, valid) of one callgrind run over the resources of types `only`."""
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--inside", "--shared", str(args.shared), "--passes", str(args.passes),
        *(["--no-terminology"] if args.no_terminology else []),
        *(["--invariants"] if args.invariants else []),
        *[a for t in only for a in ("--only", t)],
        *[a for t in args.exclude for a in ("--exclude", t)],
    ]  # fmt: skip
    # A fixed hash seed: str hashes decide dict and set probe sequences, which moved the count by
    # ~0.05% from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"callgrind run failed ({run.returncode}):\n{run.stderr[-3000:]}")
    info = orjson.loads(run.stdout.strip().splitlines()[-1])
    found = _TOTALS.search(out.read_text(errors="replace"))
    if found is None:
        sys.exit(f"no 'totals:' line in {out}: was callgrind's instrumentation turned on?")
    return int(found.group(1)), info["resources"], info["valid"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--passes", type=int, default=2, help="measured passes over the resources")
    ap.add_argument("--only", action="append", default=[], metavar="TYPE", help="only these resource types")
    ap.add_argument("--exclude", action="append", default=None, metavar="TYPE",
                    help="leave these types out (default: Bundle)")  # fmt: skip
    ap.add_argument("--no-terminology", action="store_true")
    ap.add_argument("--invariants", action="store_true")
    ap.add_argument("--per-type", action="store_true", help="one run per resource type, Ir per resource each")
    ap.add_argument("--top", type=int, default=0, help="print the N costliest functions (inclusive)")
    ap.add_argument("--out", type=Path, help="keep callgrind's output file here")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.exclude is None:
        args.exclude = [] if args.only else ["Bundle"]
    if args.inside:
        inside(args)
        return 0
    import fhirschema
    from fhirschema import engine_build

    print(f"engine {Path(fhirschema.__file__).parent} compiled={engine_build.compiled()} "
          f"passes={args.passes} terminology={not args.no_terminology} invariants={args.invariants}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "callgrind.out"
        if args.per_type:
            kinds = Counter(
                r.get("resourceType")
                for r in corpus(args.shared.resolve(), set(args.only), set(args.exclude))
            )
            total = 0
            for kind, _ in kinds.most_common():
                ir, count, _ = measure(args, [str(kind)], Path(tmp) / f"{kind}.out")
                total += ir
                print(f"{kind:<28} {count:>4} res  {ir / count / args.passes:>12,.0f} Ir/res  "
                      f"{ir / args.passes:>14,.0f} Ir/pass")  # fmt: skip
            print(f"{'total':<28} {sum(kinds.values()):>4} res  {total / args.passes:>29,.0f} Ir/pass")
            return 0
        ir, count, valid = measure(args, args.only, out)
        print(f"{count} resources ({valid} valid), {ir:,} Ir in {args.passes} passes: "
              f"{ir / count / args.passes:,.0f} Ir per resource")  # fmt: skip
        if args.top:
            annotate = subprocess.run(
                ["callgrind_annotate", "--inclusive=yes", str(out)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            lines = [line for line in annotate.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
            print("\n".join(lines[: args.top]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
