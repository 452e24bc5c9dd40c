"""Reading and following the repository state (`RepositoryState` in KV_REPOSITORY).

Only storage writes the state (storage_service/state.py); everyone else reads it here: the
gateway (readiness, /info), ig-ingest (is a package registered?) and every validator replica,
which follows it with `follow()` — a KV watch, so that a change reaches it at once, plus a read
of the key whenever the watch has been quiet for `resync` seconds (a watch lost in a reconnect
must not leave a replica behind; that read is a revision comparison, not an expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import RepositoryState

log = logging.getLogger("fhirschema.repository")


def parse_state(value: bytes | None) -> RepositoryState:
    return RepositoryState.model_validate_json(value) if value else RepositoryState()


async def read_state(kv: KeyValue) -> tuple[RepositoryState, int]:
    """The state and its KV revision (0: never written, the empty repository)."""
    try:
        entry = await kv.get(s.REPOSITORY_STATE_KEY)
    except KeyNotFoundError:
        return RepositoryState(), 0
    return parse_state(entry.value), entry.revision or 0


async def repository_kv(js: JetStreamContext) -> KeyValue:
    return await js.key_value(s.KV_REPOSITORY)


async def follow(js: JetStreamContext, resync: float = 5.0) -> AsyncIterator[RepositoryState]:
    """The current state, then every later one (each at most once, in order). Runs until
    cancelled; survives reconnects (the watch is re-created when it fails)."""
    seen = -1
    while True:
        watcher: Any = None
        try:
            kv = await repository_kv(js)
            state, revision = await read_state(kv)
            if revision != seen:  # a read is the latest: also lower after NATS lost its data
                seen = revision
                yield state
            watcher = await kv.watch(s.REPOSITORY_STATE_KEY)
            while True:
                try:
                    entry = await watcher.updates(timeout=resync)
                except TimeoutError:
                    entry = None
                if entry is None:  # quiet (or the end of the initial values): compare revisions
                    state, revision = await read_state(kv)
                    newer = revision != seen
                elif entry.operation is None and entry.value:
                    state, revision = parse_state(entry.value), entry.revision or 0
                    newer = revision > seen  # the watch delivers in order; never step back
                else:
                    continue
                if newer:
                    seen = revision
                    yield state
        except asyncio.CancelledError:
            raise
        except Exception as e:  # NATS reconnecting, bucket not there yet: try again shortly
            log.warning("repository state watch failed (%s: %s); re-reading in 1 s", type(e).__name__, e)
            await asyncio.sleep(1.0)
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()
