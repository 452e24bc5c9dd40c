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


def test_every_durable_s_failure_series_exists_from_the_start() -> None:
    """At 0 before the first failure: rate() and increase() see the first one, and the
    dashboard's failure panels show 0, not "no data" (checked on a live make up)."""
    from prometheus_client import REGISTRY

    from fhirschema_bus import metrics
    from fhirschema_bus.nats_permissions import durables_of

    assert durables_of("storage") == ["storage", "storage-batch", "storage-results"]
    assert durables_of("not-a-service") == []
    metrics.failure_series("storage", durables_of("storage"))
    for durable in durables_of("storage"):
        labels = {"service": "storage", "durable": durable}
        for name in ("fhirschema_messages_failed_total", "fhirschema_messages_dead_lettered_total"):
            assert REGISTRY.get_sample_value(name, labels) is not None, (name, durable)
