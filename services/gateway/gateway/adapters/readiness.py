"""What readiness is assessed from, read from NATS KV: the repository state (written by storage)
and the services' heartbeats (KV_SERVICES, one key per instance, expiring after 60 s)."""

from __future__ import annotations

import asyncio

from nats.js.errors import KeyNotFoundError, NoKeysError
from pydantic import ValidationError

from fhirschema_bus import repository
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
        kv = await self.bus.js.key_value(s.KV_SERVICES)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []

        async def one(key: str) -> Heartbeat | None:
            try:
                return Heartbeat.model_validate_json((await kv.get(key)).value or b"")
            except (KeyNotFoundError, ValidationError):  # gone meanwhile, or not a heartbeat
                return None

        return [b for b in await asyncio.gather(*(one(k) for k in keys)) if b is not None]
