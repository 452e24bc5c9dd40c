"""How workers hand back results: a core-NATS reply to a waiting caller, a JetStream record."""

from __future__ import annotations

import asyncio
from typing import Any

from fhirschema_bus.contracts import HEADER_MSG_ID
from fhirschema_bus.tracing import outgoing


class NatsResults:
    """The result sink of the validator and converter services."""

    def __init__(self, nc: Any, js: Any) -> None:
        self._nc, self._js = nc, js

    async def reply(self, subject: str, data: bytes) -> None:
        await self._nc.publish(subject, data, headers=outgoing())

    async def store(self, subject: str, data: bytes, msg_id: str) -> None:
        """Stored once: JetStream drops a second publish with the same `Nats-Msg-Id`."""
        await self._js.publish(subject, data, headers=outgoing({HEADER_MSG_ID: msg_id}))

    async def store_many(self, subject: str, items: list[tuple[bytes, str]], timeout: float = 30.0) -> None:
        """Pipelined: all publishes sent, then all stream acks awaited."""
        acks = [
            await self._js.publish_async(
                subject, data, headers=outgoing({HEADER_MSG_ID: msg_id}), wait_stall=timeout
            )
            for data, msg_id in items
        ]
        await asyncio.wait_for(asyncio.gather(*acks), timeout)
