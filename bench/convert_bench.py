"""Converter benchmark: our `fhirschema.converter.convert` vs npm `@atomic-ehr/fhirschema` `translate`.

Both sides convert the same 658 StructureDefinitions of hl7.fhir.r4.core#4.0.1, parsed up front
(not timed), best of N full passes, pinned to one core. Run from the repo root:

    .venv/bin/python bench/convert_bench.py [--runs 5] [--shared ../shared] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from fhirschema.converter import convert
from fhirschema.package import load_tgz

REPO = Path(__file__).resolve().parent.parent
SCRATCH = REPO / "bench" / ".scratch"
NODE_SCRIPT = REPO / "bench" / "atomic_convert.mjs"
NPM_PACKAGE = "@atomic-ehr/fhirschema"
NPM_VERSION = "0.0.14"
CORE = "fhir/packages/hl7.fhir.r4.core#4.0.1.tgz"
EXPECTED_SDS = 658
TARGET_RATIO = 1.5


def load_sds(shared: Path) -> list[dict[str, Any]]:
    pkg = load_tgz(shared / CORE)
    return list(pkg.resources("StructureDefinition"))


def pin_one_core() -> int | None:
    """Pin this process (and the Node child, which inherits it) to one CPU: same footing for both."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def time_ours(sds: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Best of `runs` full passes; one untimed warm-up pass first, like the Node side."""
    outputs: list[dict[str, Any] | None] = []
    errors: list[str] = []
    for sd in sds:  # warm-up, also collects outputs/errors for the comparison
        try:
            outputs.append(convert(sd))
        except Exception as exc:
            outputs.append(None)
            errors.append(f"{sd.get('url')}: {exc}"[:160])
    best = float("inf")
    for _ in range(runs):
        gc.collect()  # start each pass from a clean heap so one pass doesn't pay for the last
        t0 = time.perf_counter()
        for sd in sds:
            try:
                convert(sd)
            except Exception:
                pass  # already counted in the warm-up pass; the converter is deterministic
        best = min(best, time.perf_counter() - t0)
    return {
        "count": len(sds) - len(errors),
        "errors": len(errors),
        "error_urls": errors[:20],
        "seconds": best,
        "outputs": outputs,
    }


def ensure_npm_package() -> Path:
    pkg_json = SCRATCH / "node_modules" / "@atomic-ehr" / "fhirschema" / "package.json"
    if pkg_json.exists() and json.loads(pkg_json.read_text()).get("version") == NPM_VERSION:
        return pkg_json.parent
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm not found on PATH (Node 20 is needed for the comparison)")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(f"installing {NPM_PACKAGE}@{NPM_VERSION} into {SCRATCH} ...", file=sys.stderr)
    subprocess.run(
        [npm, "install", "--prefix", str(SCRATCH), "--no-audit", "--no-fund", f"{NPM_PACKAGE}@{NPM_VERSION}"],
        check=True,
        stdout=sys.stderr,
    )
    return pkg_json.parent


def run_node(script: Path, *args: object) -> dict[str, Any]:
    """Run a Node script of ours; its last stdout line is a JSON summary."""
    node = shutil.which("node")
    if node is None:
        sys.exit("node not found on PATH (Node 20 is needed for the comparison)")
    proc = subprocess.run([node, str(script), *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_theirs(sds: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    ensure_npm_package()
    sds_file = SCRATCH / "r4-core-sds.json"
    out_file = SCRATCH / "atomic-outputs.json"
    sds_file.write_bytes(orjson.dumps(sds))
    result = run_node(NODE_SCRIPT, sds_file, runs, SCRATCH, out_file)
    result["outputs"] = orjson.loads(out_file.read_bytes())
    return result


def element_paths(schema: dict[str, Any] | None, prefix: str = "") -> set[str]:
    """Dotted paths of all (nested) `elements`: a cheap structural fingerprint of a schema.

    Names listed in `excluded` count as paths too: we hoist `max = "0"` children into the
    parent's `excluded` (SPEC), while atomic keeps them as (near-empty) elements.
    """
    schema = schema or {}
    paths: set[str] = {f"{prefix}{name}" for name in schema.get("excluded") or ()}
    for name, el in (schema.get("elements") or {}).items():
        path = f"{prefix}{name}"
        paths.add(path)
        if isinstance(el, dict):
            paths |= element_paths(el, path + ".")
    return paths


def compare(sds: list[dict[str, Any]], ours: list[Any], theirs: list[Any]) -> dict[str, Any]:
    """How many SDs both sides converted, and of those how many have identical element trees."""
    both = same = 0
    differ: list[str] = []
    for sd, a, b in zip(sds, ours, theirs, strict=True):
        if a is None or b is None:
            continue
        both += 1
        if element_paths(a) == element_paths(b):
            same += 1
        elif len(differ) < 10:
            only_a = sorted(element_paths(a) - element_paths(b))[:3]
            only_b = sorted(element_paths(b) - element_paths(a))[:3]
            differ.append(f"{sd.get('url')}: only ours {only_a}, only theirs {only_b}")
    return {"converted_by_both": both, "same_element_paths": same, "differ_examples": differ}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="reference data dir")
    ap.add_argument("--runs", type=int, default=5, help="timed passes per side (best is reported)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--ours-only", action="store_true", help="skip the Node comparison")
    args = ap.parse_args(argv)

    sds = load_sds(args.shared)
    if len(sds) != EXPECTED_SDS:
        print(f"warning: expected {EXPECTED_SDS} StructureDefinitions, got {len(sds)}", file=sys.stderr)
    cpu = None if args.no_pin else pin_one_core()
    ours = time_ours(sds, args.runs)
    theirs = None if args.ours_only else time_theirs(sds, args.runs)

    summary: dict[str, Any] = {
        "package": "hl7.fhir.r4.core#4.0.1",
        "structure_definitions": len(sds),
        "runs": args.runs,
        "pinned_cpu": cpu,
        "python": sys.version.split()[0],
        "ours": _side(ours),
    }
    if theirs is not None:
        summary["theirs"] = {**_side(theirs), "package": f"{NPM_PACKAGE}@{theirs.get('version')}"}
        summary["ratio_ours_over_theirs"] = round(theirs["seconds"] / ours["seconds"], 3)
        summary["target_ratio"] = TARGET_RATIO
        summary["comparison"] = compare(sds, ours["outputs"], theirs["outputs"])
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_text(summary)
    return 0


def _side(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "converted": r["count"],
        "errors": r["errors"],
        "error_examples": r.get("error_urls", []),
        "seconds": round(r["seconds"], 6),
        "sds_per_second": round(r["count"] / r["seconds"], 1) if r["seconds"] else None,
    }


def _print_text(s: dict[str, Any]) -> None:
    pin = f"CPU {s['pinned_cpu']}" if s["pinned_cpu"] is not None else "unpinned"
    print(f"{s['package']}: {s['structure_definitions']} SDs, best of {s['runs']}, {pin}")
    sides = [("ours (Python " + s["python"] + ")", s["ours"])]
    if "theirs" in s:
        sides.append((s["theirs"]["package"] + " (Node " + _node_version() + ")", s["theirs"]))
    for label, r in sides:
        print(
            f"  {label:<46} {r['sds_per_second']:>9.1f} SDs/s  {r['seconds']:.4f} s  "
            f"converted {r['converted']}, errors {r['errors']}"
        )
        for e in r["error_examples"][:5]:
            print(f"      error: {e}")
    if "theirs" in s:
        ratio = s["ratio_ours_over_theirs"]
        verdict = "meets" if ratio >= s["target_ratio"] else "BELOW"
        print(f"  ratio ours/theirs: {ratio:.2f}x ({verdict} target {s['target_ratio']}x)")
        c = s["comparison"]
        print(
            f"  outputs: {c['converted_by_both']} converted by both, "
            f"{c['same_element_paths']} with identical element paths (excluded counted as paths)"
        )
        for d in c["differ_examples"][:5]:
            print(f"      differs: {d}")


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
