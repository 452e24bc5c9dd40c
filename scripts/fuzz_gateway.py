"""Schemathesis over a running gateway, longer than the test suite's bounded run.

    make up   # (another terminal) or any gateway; with auth on, pass a key holding every scope
    .venv/bin/python scripts/fuzz_gateway.py --url http://127.0.0.1:8080 [--api-key KEY] [--examples 200]

Prints every server error (tests/services/fuzz.py says which 5xx are answers, not errors) and
how many requests were sent; exits 1 when there is one. Send it only to a gateway of yours.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.services.fuzz import fuzz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", default="", help="sent as X-API-Key (a key with every scope)")
    ap.add_argument("--examples", type=int, default=200, help="generated requests per operation")
    ap.add_argument("--seed", type=int, default=1, help="0: the test suite's fixed examples")
    args = ap.parse_args()
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    t0 = time.monotonic()
    failures, sent = fuzz(args.url.rstrip("/"), headers, args.examples, seed=args.seed)
    for failure in failures:
        print(failure)
    print(f"{sent} requests, {len(failures)} server errors, {time.monotonic() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
