"""Worker metrics read from a real JetStream server: consumer lag per durable, dead letters."""

from __future__ import annotations

from nats.aio.client import Client

from fhirschema_bus import jetstream_stats
from fhirschema_bus import metrics as m
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_MSG_ID


async def test_consumer_lag_and_dead_letters_come_from_the_server(nc: Client) -> None:
    js = nc.jetstream()
    for i in range(3):
        await js.publish(s.VALIDATE_BATCH_ITEM, b"{}", headers={HEADER_MSG_ID: f"lag-{i}"})
    await js.publish(f"{s.DEAD_LETTER}.{s.VALIDATE_ONE}", b"{}", headers={HEADER_MSG_ID: "dead-1"})
    # One delivered and not acked: ack-pending, and pending no more.
    sub = await js.pull_subscribe_bind(s.DURABLE_VALIDATOR_BATCH, stream=s.STREAM_REQUESTS)
    (msg,) = await sub.fetch(1, timeout=5)
    await jetstream_stats.poll_once(js)
    assert m.CONSUMER_PENDING.labels(s.DURABLE_VALIDATOR_BATCH)._value.get() == 2
    assert m.CONSUMER_ACK_PENDING.labels(s.DURABLE_VALIDATOR_BATCH)._value.get() == 1
    assert m.CONSUMER_PENDING.labels(s.DURABLE_VALIDATOR_ONE)._value.get() == 0
    assert m.DEAD_LETTERS._value.get() == 1
    await msg.nak()
    await jetstream_stats.poll_once(js)
    (msg,) = await sub.fetch(1, timeout=5)  # the same message, delivered again
    assert msg.metadata.num_delivered == 2
    await jetstream_stats.poll_once(js)
    assert m.CONSUMER_REDELIVERED.labels(s.DURABLE_VALIDATOR_BATCH)._value.get() == 1
