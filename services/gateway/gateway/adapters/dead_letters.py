"""Dead letters read from the FHIRSCHEMA_DLQ stream; replay republishes the original message."""

from __future__ import annotations

import base64

from nats.js.errors import NotFoundError

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_MSG_ID, DeadLetter
from gateway.bus import Bus


class StreamDeadLetters:
    def __init__(self, bus: Bus):
        self.bus = bus

    async def get(self, seq: int) -> DeadLetter | None:
        try:
            msg = await self.bus.js.get_msg(s.STREAM_DEAD_LETTERS, seq)
        except NotFoundError:
            return None
        if not msg.data:
            return None
        letter = DeadLetter.model_validate_json(msg.data)
        letter.stream_seq = seq
        return letter

    async def list(self, limit: int = 100) -> list[tuple[int, DeadLetter]]:
        info = await self.bus.js.stream_info(s.STREAM_DEAD_LETTERS)
        first, last = info.state.first_seq, info.state.last_seq
        out: list[tuple[int, DeadLetter]] = []
        seq = last
        while seq >= first and seq > 0 and len(out) < limit:  # newest first
            letter = await self.get(seq)
            if letter is not None:
                out.append((seq, letter))
            seq -= 1
        return out

    async def replay(self, seq: int) -> DeadLetter | None:
        letter = await self.get(seq)
        if letter is None:
            return None
        headers = {k: v for k, v in letter.headers.items() if k != HEADER_MSG_ID}
        headers[HEADER_MSG_ID] = f"{letter.headers.get(HEADER_MSG_ID, seq)}.replay.{seq}"
        await self.bus.js.publish(letter.subject, base64.b64decode(letter.payload), headers=headers)
        return letter
