"""The converter service: StructureDefinition → FHIRSchema from JetStream, optionally stored.

`python -m converter_service` runs one replica; run as many as load needs.
"""

from .bootstrap import bootstrap

__all__ = ["bootstrap"]
