"""The validator service: validates FHIR resources from JetStream (single requests and batch items).

`python -m validator_service` runs one replica; run as many as load needs.
"""

from .bootstrap import ValidatorSettings, bootstrap

__all__ = ["ValidatorSettings", "bootstrap"]
