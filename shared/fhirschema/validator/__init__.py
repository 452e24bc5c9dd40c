"""The FHIRSchema validator (SPEC §3-5): schema sets compiled into cached plans, walked with the data.

This package init stays Python when the other modules are compiled (scripts/build_engine.py):
a compiled package init cannot import the compiled group that lives inside it.

`Validator` is imported on first use (PEP 562): the message contracts need only `issues`, and
importing the engine with them cost every service that never validates (converter, storage,
gateway, ig-ingest) about 50 ms of CPU at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhirschema.validator.issues import Issue, ValidationResult

if TYPE_CHECKING:
    from fhirschema.validator.engine import Validator

__all__ = ["Issue", "ValidationResult", "Validator"]


def __getattr__(name: str) -> Any:
    if name == "Validator":
        from fhirschema.validator.engine import Validator

        return Validator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
