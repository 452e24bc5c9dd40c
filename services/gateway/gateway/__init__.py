"""The FHIRSchema HTTP gateway: a FastAPI app in front of the JetStream services."""

from __future__ import annotations

__version__ = "0.1.0"
