"""Wheel builds (the Docker images) compile the validator with mypyc: see scripts/build_engine.py.

FHIRSCHEMA_COMPILE=0 skips it (no C compiler needed; validation is then about 3x slower).
`make install` sets it for the editable install and builds in place with `make engine` instead.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

if os.environ.get("FHIRSCHEMA_COMPILE", "1") == "0":
    setup()
else:
    from build_engine import extensions

    setup(ext_modules=extensions("shared/"))
