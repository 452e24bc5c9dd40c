"""What readiness is assessed from, read from NATS KV: the repository state (written by storage)
and the services' heartbeats (KV_SERVICES, one key per instance, expiring after 60 s)."""

from __future__ import annotations

from pydantic import ValidationError

from fhirschema_bus import kv_list, repository
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import Heartbeat, RepositoryState
from gateway.bus import Bus


class KvReadiness:
    def __init__(self, bus: Bus):
        self.bus = bus

    async def repository(self) -> RepositoryState:
        state, _ = await repository.read_state(await repository.repository_kv(self.bus.js))
        return state

    async def heartbeats(self) -> list[Heartbeat]:
        # Read every 2 s (every 0.2 s while not ready): kv_list creates no consumer, kv.keys()
        # left one per call on the stream for 5 minutes.
        beats = []
        for entry in await kv_list.entries(self.bus.js, s.KV_SERVICES):
            try:
                beats.append(Heartbeat.model_validate_json(entry.value or b""))
            except ValidationError:  # not a heartbeat
                continue
        return beats
