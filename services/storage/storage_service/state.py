"""The repository state's only writer: every change is a compare-and-set on the KV revision.

Several storage replicas may change it at once (two packages indexed together): a write that
lost the race re-reads the state and applies its change again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import RepositoryState, now
from fhirschema_bus.repository import read_state, repository_kv

MAX_CONFLICTS = 100
Change = Callable[[RepositoryState], bool]  # mutates the state; False: nothing to write


class StateStore(Protocol):
    async def read(self) -> RepositoryState: ...
    async def change(self, change: Change) -> RepositoryState: ...


class KvState:
    """The state in KV_REPOSITORY (StateStore), opened on first use: the service is wired before
    NATS is connected."""

    def __init__(self, js: Callable[[], JetStreamContext]) -> None:
        self._js = js
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await repository_kv(self._js())
        return self._kv

    async def read(self) -> RepositoryState:
        return (await read_state(await self.kv()))[0]

    async def change(self, change: Change) -> RepositoryState:
        """Apply `change` to the latest state and write it with revision + 1."""
        kv = await self.kv()
        for _ in range(MAX_CONFLICTS):
            state, revision = await read_state(kv)
            if not change(state):
                return state
            state.revision += 1
            state.updated = now()
            data = state.model_dump_json().encode()
            try:
                if revision == 0:
                    await kv.create(s.REPOSITORY_STATE_KEY, data)
                else:
                    await kv.update(s.REPOSITORY_STATE_KEY, data, last=revision)
                return state
            except KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0, 0.01))  # another replica won: re-read, redo
        raise RuntimeError("the repository state changed too often to be updated; try again")


class MemoryState:
    """An in-memory StateStore (unit tests)."""

    def __init__(self) -> None:
        self.state = RepositoryState()

    async def read(self) -> RepositoryState:
        return self.state.model_copy(deep=True)

    async def change(self, change: Change) -> RepositoryState:
        state = self.state.model_copy(deep=True)
        if change(state):
            state.revision += 1
            state.updated = now()
            self.state = state
        return state.model_copy(deep=True)
