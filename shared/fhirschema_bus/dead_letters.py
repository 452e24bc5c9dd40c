"""Dead letters: messages that cannot be processed, kept in stream `FHIRSCHEMA_DLQ` for replay.

A message goes there when its payload is malformed (no retry can fix it) or when it has used up
`NatsSettings.max_deliver` deliveries and still fails. The original is TERMinated so that
JetStream stops redelivering it. The gateway lists, shows and replays dead letters through the
functions below.
"""

from __future__ import annotations

import base64
import uuid

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_MSG_ID, DeadLetter

MAX_ERROR_CHARS = 4000  # a stack trace does not belong in a message


def dead_letter_subject(original: str) -> str:
    return f"{s.DEAD_LETTER}.{original}"


async def send_to_dead_letters(
    js: JetStreamContext, msg: Msg, error: str, service: str, *, deliveries: int | None = None
) -> PubAck:
    """Store `msg` as a DeadLetter, then TERM it (in that order: a crash between the two steps
    redelivers the message, and the Nats-Msg-Id below keeps the dead letter single)."""
    meta = _metadata(msg)
    if deliveries is None:
        deliveries = meta.num_delivered if meta else 1
    letter = DeadLetter(
        subject=msg.subject,
        payload=base64.b64encode(msg.data or b"").decode(),
        headers={k: str(v) for k, v in (msg.headers or {}).items()},
        error=error[:MAX_ERROR_CHARS],
        deliveries=deliveries,
        service=service,
    )
    # One dead letter per original message: keyed by its stream and stream sequence.
    msg_id = f"dlq.{meta.stream}.{meta.sequence.stream}" if meta else f"dlq.{uuid.uuid4().hex}"
    ack = await js.publish(
        dead_letter_subject(msg.subject),
        letter.model_dump_json().encode(),
        headers={HEADER_MSG_ID: msg_id},
    )
    if meta is not None:
        await msg.term()
    return ack


async def list_dead_letters(
    js: JetStreamContext, *, limit: int = 100, after_seq: int = 0
) -> list[DeadLetter]:
    """Oldest first, starting after stream sequence `after_seq` (pagination)."""
    out: list[DeadLetter] = []
    seq = after_seq + 1
    while len(out) < limit:
        try:
            raw = await js.get_msg(s.STREAM_DEAD_LETTERS, seq, subject=f"{s.DEAD_LETTER}.>", next=True)
        except NotFoundError:
            break
        out.append(_decode(raw.data, raw.seq))
        seq = (raw.seq or seq) + 1
    return out


async def get_dead_letter(js: JetStreamContext, seq: int) -> DeadLetter | None:
    try:
        raw = await js.get_msg(s.STREAM_DEAD_LETTERS, seq)
    except NotFoundError:
        return None
    return _decode(raw.data, seq)


async def replay(js: JetStreamContext, seq: int) -> PubAck | None:
    """Republish the original payload and headers to the original subject; None if unknown seq.

    The message gets a fresh Nats-Msg-Id: the old one is inside the de-duplication window of
    the work stream when the replay is quick, and would be silently dropped.
    """
    letter = await get_dead_letter(js, seq)
    if letter is None:
        return None
    headers = {k: v for k, v in letter.headers.items() if k != HEADER_MSG_ID}
    headers[HEADER_MSG_ID] = f"replay.{seq}.{uuid.uuid4().hex}"
    headers["Fhirschema-Replay-Of"] = str(seq)
    return await js.publish(letter.subject, base64.b64decode(letter.payload), headers=headers)


def _decode(data: bytes | None, seq: int | None) -> DeadLetter:
    letter = DeadLetter.model_validate_json(data or b"{}")
    letter.stream_seq = seq
    return letter


def _metadata(msg: Msg) -> Msg.Metadata | None:
    try:
        return msg.metadata
    except Exception:  # a core NATS message has no JetStream ack subject
        return None
