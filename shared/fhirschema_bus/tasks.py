"""Stopping background tasks for sure.

Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives just as the awaited
future completes (CPython gh-86296, fixed in 3.12), and nats-py awaits every request that way.
A task cancelled during a NATS request may therefore carry on as if nothing happened: a
periodic loop then runs forever, and whoever awaits it after `cancel()` waits forever.
Measured here: 83 of 200 cancels of the JetStream stats poll (jetstream_stats.py) swallowed,
and an idle worker sent SIGTERM right after /ready hung in its shutdown in 2 to 5 of 6 stops.

`stop()` cancels again until the task has ended, within a bound; what a task does on
cancellation (its `finally`) gets `every` seconds before the next cancel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("fhirschema.tasks")


async def stop(*tasks: asyncio.Task[Any] | None, timeout: float = 2.0, every: float = 0.2) -> bool:
    """Cancel the tasks and wait until they have ended (at most `timeout` s); True if all did.
    Their results and exceptions are dropped (they are being stopped)."""
    pending: set[asyncio.Task[Any]] = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(every, left))
    for ended in tasks:
        if ended is not None and ended.done() and not ended.cancelled():
            ended.exception()  # retrieved: no "exception was never retrieved" at exit
    if pending:
        log.warning("tasks still running %.1f s after cancel: %s", timeout,
                    ", ".join(t.get_name() for t in pending))  # fmt: skip
    return not pending
