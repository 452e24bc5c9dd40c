"""FHIRSchema engine: package loader, StructureDefinition converter, validator, local terminology.

A pure library — no NATS, S3 or Redis imports — usable in-process and from the `fhirschema` CLI.
"""

__version__ = "0.1.0"

from fhirschema import engine_build

engine_build.select()
