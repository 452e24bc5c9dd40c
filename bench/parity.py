"""The parity suite over the FULL shared corpora: every R4 spec example (714) and every Synthea
line (7,150), besides every IG's examples — through POST /validate, POST /validate/batch and
WS /validate/stream on a real stack (two validator replicas, packages ingested by ig-ingest),
each outcome compared with `fhirschema validate` on the same bytes and packages.

It is tests/services/test_parity.py with FHIRSCHEMA_PARITY_FULL=1 (make test runs a
deterministic sample: every 7th R4 example, 8 lines per Synthea file); the per-corpus timings
are printed. An uploaded profile, then replaced, must hold on every replica within 2 s here
(FHIRSCHEMA_PARITY_PROPAGATION_S; make test allows 10 s on a shared CI machine).

    .venv/bin/python bench/parity.py [pytest args, e.g. -k us.core]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "tests/services/test_parity.py",
    ]
    env = {"FHIRSCHEMA_PARITY_PROPAGATION_S": "2", **os.environ, "FHIRSCHEMA_PARITY_FULL": "1"}
    sys.exit(subprocess.call([*cmd, *sys.argv[1:]], cwd=REPO, env=env))
