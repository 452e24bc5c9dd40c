"""ig-ingest: loads named FHIR packages from registries or directories into the repository."""

__version__ = "0.1.0"
