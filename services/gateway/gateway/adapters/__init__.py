"""Adapters behind the Protocols in `gateway.ports` (used until / unless the shared ones fit)."""
