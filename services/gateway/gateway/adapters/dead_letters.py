"""Dead letters: the shared functions of `fhirschema_bus.dead_letters` on the gateway's bus."""

from __future__ import annotations

from fhirschema_bus import dead_letters as dl
from fhirschema_bus.contracts import DeadLetter
from gateway.bus import Bus


class StreamDeadLetters:
    def __init__(self, bus: Bus):
        self.bus = bus

    async def list(self, limit: int = 100, after: int = 0) -> list[DeadLetter]:
        return await dl.list_dead_letters(self.bus.js, limit=limit, after_seq=after)

    async def get(self, seq: int) -> DeadLetter | None:
        return await dl.get_dead_letter(self.bus.js, seq)

    async def replay(self, seq: int) -> DeadLetter | None:
        letter = await self.get(seq)
        if letter is None or await dl.replay(self.bus.js, seq) is None:
            return None
        return letter
