"""The FHIRSchema validator (SPEC §3-5): schema sets compiled into cached plans, walked with the data.

This package init stays Python when the other modules are compiled (scripts/build_engine.py):
a compiled package init cannot import the compiled group that lives inside it.
"""

from fhirschema.validator.engine import Validator
from fhirschema.validator.issues import Issue, ValidationResult

__all__ = ["Issue", "ValidationResult", "Validator"]
