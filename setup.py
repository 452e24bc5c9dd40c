"""Wheel builds (the Docker images) compile the validator with mypyc: see scripts/build_engine.py.

FHIRSCHEMA_COMPILE=0 skips it (no C compiler needed; validation is then about 3x slower).
Editable installs (`pip install -e .`, as `make install` does) never compile: `make engine`
builds a checkout in place, with the manifest that detects a stale build.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

if os.environ.get("FHIRSCHEMA_COMPILE", "1") == "0" or "editable_wheel" in sys.argv:
    # An editable install would put extensions beside the sources without the manifest that
    # tells a stale build from a current one: `make engine` compiles a checkout instead.
    setup()
else:
    from build_engine import extensions

    setup(ext_modules=extensions("shared/"))
