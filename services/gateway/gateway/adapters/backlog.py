"""How far the validators are behind: JetStream's count of validate messages not yet delivered
to a validator (both durables), polled from the server every second. The gateway sheds new
validations while it is past FHIRSCHEMA_SHED_VALIDATE_PENDING, instead of queuing without limit."""

from __future__ import annotations

import asyncio
import logging

from fhirschema_bus import subjects as s
from fhirschema_bus import tasks
from gateway.bus import Bus

log = logging.getLogger("gateway.backlog")
DURABLES = (s.DURABLE_VALIDATOR_ONE, s.DURABLE_VALIDATOR_BATCH)


class ValidateBacklog:
    def __init__(self, bus: Bus, every: float = 1.0) -> None:
        self.bus = bus
        self.every = every
        self.pending = 0  # the last figure read; 0 until one is (nothing is shed on a guess)
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> int:
        total = 0
        for durable in DURABLES:
            info = await self.bus.js.consumer_info(s.STREAM_REQUESTS, durable)
            total += info.num_pending or 0
        self.pending = total
        return total

    async def _poll(self) -> None:
        failing = False
        while True:
            try:
                await self.poll_once()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS down: the validations fail on their own, kept as it was
                if not failing:
                    log.warning("validate backlog not read: %s", e or type(e).__name__)
                failing = True
            await asyncio.sleep(self.every)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="validate-backlog")

    async def stop(self) -> None:
        await tasks.stop(self._task)  # re-cancels: a cancel during a NATS request can be swallowed
        self._task = None
