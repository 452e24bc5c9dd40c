"""The converter service: StructureDefinition → FHIRSchema from JetStream, optionally stored.

`python -m converter_service` runs one replica; run as many as load needs.

Imports nothing itself: `python -m` imports a package before its `__main__`, which must first
mark what the service never imports (optional_imports.py). Its parts: `.bootstrap` (bootstrap).
"""
