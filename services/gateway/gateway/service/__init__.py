"""The gateway's service layer: what the routes call (no FastAPI types in here)."""
