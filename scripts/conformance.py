"""Validate a folder of real examples and summarise: how many valid, and every error, grouped.

    python scripts/conformance.py r4-spec           # R4 spec examples against R4 core
    python scripts/conformance.py us-core-6         # US Core 6.1.0 examples against their meta.profile
    python scripts/conformance.py all --json out.json

Each IG's examples run against their `meta.profile` with the IG's dependencies as
`../shared/fhir/packages` holds them (the nearest version where the exact one is missing:
terminology.r4 7.0.1 for 5.0.0-6.5.0, extensions.r4 5.2.0 for 5.1.0; ihe.formatcode.fhir is absent).

The triage of the remaining errors lives in docs/conformance.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import orjson

from fhirschema.context import FhirContext
from fhirschema.invariants import Invariants
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "fhir"
PKG = SHARED / "packages"

CORPORA = {
    "r4-spec": ("r4-spec", ["hl7.fhir.r4.core#4.0.1"]),
    "us-core-6": ("hl7.fhir.us.core#6.1.0", ["hl7.fhir.us.core#6.1.0", "hl7.fhir.r4.core#4.0.1",
                                              "hl7.terminology.r4#7.0.1", "hl7.fhir.uv.extensions.r4#5.2.0"]),
    "us-core-3": ("hl7.fhir.us.core#3.1.1", ["hl7.fhir.us.core#3.1.1", "hl7.fhir.r4.core#4.0.1",
                                              "hl7.terminology.r4#7.0.1"]),
    "ips": ("hl7.fhir.uv.ips#2.0.0", ["hl7.fhir.uv.ips#2.0.0", "hl7.fhir.r4.core#4.0.1", "hl7.fhir.uv.ipa#1.1.0",
                                      "hl7.terminology.r4#7.0.1", "hl7.fhir.uv.extensions.r4#5.2.0"]),
    "genomics": ("hl7.fhir.uv.genomics-reporting#3.0.0", ["hl7.fhir.uv.genomics-reporting#3.0.0",
                                                          "hl7.fhir.r4.core#4.0.1", "hl7.terminology.r4#7.0.1",
                                                          "hl7.fhir.uv.extensions.r4#5.2.0"]),
    "ch-core": ("ch.fhir.ig.ch-core#2.0.0", ["ch.fhir.ig.ch-core#2.0.0", "ch.fhir.ig.ch-epr-term#2.0.8",
                                             "hl7.fhir.r4.core#4.0.1", "hl7.terminology.r4#7.0.1"]),
    "ch-orf": ("ch.fhir.ig.ch-orf#1.0.0", ["ch.fhir.ig.ch-orf#1.0.0", "ch.fhir.ig.ch-core#2.0.0",
                                           "ch.fhir.ig.ch-epr-term#2.0.8", "hl7.fhir.uv.sdc#2.7.0",
                                           "hl7.fhir.r4.core#4.0.1", "hl7.terminology.r4#7.0.1"]),
    "ch-lab-order": ("ch.fhir.ig.ch-lab-order#1.0.0", ["ch.fhir.ig.ch-lab-order#1.0.0", "ch.fhir.ig.ch-orf#1.0.0",
                                                       "ch.fhir.ig.ch-core#2.0.0", "ch.fhir.ig.ch-epr-term#2.0.8",
                                                       "hl7.fhir.uv.sdc#2.7.0", "hl7.fhir.r4.core#4.0.1",
                                                       "hl7.terminology.r4#7.0.1"]),
    "synthea": ("synthea-bulk-10-patients", ["hl7.fhir.us.core#6.1.0", "hl7.fhir.r4.core#4.0.1",
                                             "hl7.terminology.r4#7.0.1", "hl7.fhir.uv.extensions.r4#5.2.0"]),
}  # fmt: skip


def load(folder: Path) -> list[tuple[str, dict]]:
    items = []
    for file in sorted(folder.iterdir()):
        if file.suffix == ".json":
            items.append((file.name, orjson.loads(file.read_bytes())))
        elif file.suffix == ".ndjson":
            for n, line in enumerate(file.read_bytes().splitlines(), 1):
                if line.strip():
                    items.append((f"{file.name}:{n}", orjson.loads(line)))
    return items


def run(name: str, invariants: bool) -> dict:
    folder, packages = CORPORA[name]
    ctx = FhirContext.from_specs([PKG / f"{p}.tgz" for p in packages], with_dependencies=False)
    validator = Validator(
        ctx, invariants=Invariants() if invariants else None, terminology=Terminology(ctx.resource)
    )
    items = load(SHARED / "examples" / folder)
    started = time.perf_counter()
    valid = 0
    errors: list[dict] = []
    for source, resource in items:
        result = validator.validate(resource)
        if result.valid:
            valid += 1
        for issue in result.errors():
            errors.append({"source": source, "code": issue.code, "path": issue.expression(result.resource_type),
                           "message": issue.message})  # fmt: skip
    seconds = time.perf_counter() - started
    return {
        "corpus": name,
        "total": len(items),
        "valid": valid,
        "seconds": round(seconds, 2),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", choices=[*CORPORA, "all"])
    parser.add_argument("--no-invariants", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="write the full report (every error) as JSON")
    args = parser.parse_args()
    names = list(CORPORA) if args.corpus == "all" else [args.corpus]
    reports = [run(n, not args.no_invariants) for n in names]
    for r in reports:
        pct = 100 * r["valid"] / r["total"] if r["total"] else 0
        print(f"{r['corpus']:<10} {r['valid']}/{r['total']} valid ({pct:.1f}%) in {r['seconds']} s")
        by_code = collections.Counter(e["code"] for e in r["errors"])
        for code, n in by_code.most_common():
            print(f"    {code}: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
