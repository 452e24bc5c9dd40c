"""tasks.stop ends tasks that swallowed their cancellation (Python 3.11's wait_for, gh-86296)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from fhirschema_bus import tasks


async def _wait_for_then_loop(fut: asyncio.Future[int], turns: list[int]) -> None:
    await asyncio.wait_for(fut, 10)  # as nats-py awaits every request
    while True:  # a periodic loop (heartbeat, JetStream stats)
        turns.append(1)
        await asyncio.sleep(0.05)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for no longer swallows cancellation")
async def test_wait_for_swallows_a_cancel_that_meets_its_result() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    turns: list[int] = []
    task = asyncio.create_task(_wait_for_then_loop(fut, turns))
    await asyncio.sleep(0.01)
    fut.set_result(1)  # the reply arrives ...
    task.cancel()  # ... in the loop iteration the task is cancelled
    done, _ = await asyncio.wait([task], timeout=0.3)
    assert not done and turns  # cancelled, yet it runs on: an `await task` would never return
    assert await tasks.stop(task, timeout=1.0)
    assert task.cancelled()


async def test_stop_ends_a_task_that_swallows_cancels_and_gives_up_when_bounded() -> None:
    swallowed = 0
    stubborn_until = 2

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > stubborn_until:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await tasks.stop(task, None, timeout=2.0, every=0.05)
    assert task.cancelled() and swallowed == 3

    swallowed, stubborn_until = 0, 10**9
    forever = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert not await tasks.stop(forever, timeout=0.3, every=0.05)  # bounded: says so, returns
    stubborn_until = 0
    assert await tasks.stop(forever)


async def test_stop_retrieves_exceptions() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await tasks.stop(task)  # already ended: nothing to cancel, its error is not re-raised
