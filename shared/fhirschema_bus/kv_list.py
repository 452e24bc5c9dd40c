"""Listing a JetStream KV bucket without creating a consumer.

nats-py's `KeyValue.keys()` (and `watch()`) create an ordered push consumer per call with an
inactivity threshold of 5 minutes: the server keeps each one for 5 minutes after the call
returned. Polled every 2 s (the gateway's readiness reads the heartbeats that often, every
0.2 s while not ready), that is hundreds of live consumers on one stream, and a long-running
stack once hit "maximum consumers limit reached".

Here the keys come from the stream's per-subject counts (`STREAM.INFO` with a subjects
filter: a read of stream state, no consumer) and the values from direct/message gets. A key
whose last message is a delete or purge marker still has a subject, so `entries()` drops those
when it reads them; that is also why it returns entries rather than bare keys.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

# nats-server answers at most this many subjects in one STREAM.INFO (JSMaxSubjectDetails);
# nats-py does not page. Every bucket listed here holds far fewer keys (instances, jobs of
# 7 days, packages).
MAX_SUBJECTS = 100_000


def _prefix(bucket: str) -> str:
    return f"$KV.{bucket}."


async def keys(js: JetStreamContext, bucket: str, prefix: str = "") -> list[str]:
    """Keys that have a message in the bucket (deleted ones may be among them), sorted.
    A `prefix` ending in '.' is filtered by the server, any other one here."""
    head = _prefix(bucket)
    token_prefix = prefix if prefix.endswith(".") else ""
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{head}{token_prefix}>")
    except NotFoundError:
        return []
    subjects = info.state.subjects or {}
    return sorted(k for k in (subj[len(head) :] for subj in subjects) if k.startswith(prefix))


async def entries(
    js: JetStreamContext, bucket: str, prefix: str = "", *, kv: KeyValue | None = None
) -> list[KeyValue.Entry]:
    """The live entries (a value, not a delete marker) under `prefix`, read concurrently;
    `kv`: the bucket if the caller has it open already (saves a round trip)."""
    store = kv if kv is not None else await js.key_value(bucket)

    async def one(key: str) -> KeyValue.Entry | None:
        try:
            entry = await store.get(key)
        except (KeyNotFoundError, KeyDeletedError):  # deleted, purged or expired meanwhile
            return None
        return entry if entry.value else None

    found = await asyncio.gather(*(one(k) for k in await keys(js, bucket, prefix)))
    return [e for e in found if e is not None]
