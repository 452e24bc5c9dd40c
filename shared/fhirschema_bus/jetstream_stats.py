"""Consumer lag and dead letters, read from the JetStream server into gauges (metrics.py).

Every worker polls every durable of the topology (a handful of `consumer_info` calls every
`WorkerSettings.stats_seconds`): the figures are the server's, the same from each replica, so
dashboards and alerts take `max by (durable)`. A replica that cannot reach NATS keeps the last
figures and says nothing more than a warning once.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from fhirschema_bus import metrics as m
from fhirschema_bus import subjects as s
from fhirschema_bus.topology import DURABLES

log = logging.getLogger("fhirschema.jetstream_stats")

# Consumers outside the topology's work durables, by (stream, durable).
EXTRA_DURABLES = [(s.STREAM_EVENTS, "storage-results")]


async def poll_once(js: JetStreamContext) -> None:
    targets = [(await js.find_stream_name_by_subject(d.subject.replace(">", "x")), d.name) for d in DURABLES]
    for stream, durable in [*targets, *EXTRA_DURABLES]:
        try:
            info = await js.consumer_info(stream, durable)
        except Exception:  # not created yet (storage-results: by storage's first start)
            continue
        m.CONSUMER_PENDING.labels(durable).set(info.num_pending or 0)
        m.CONSUMER_ACK_PENDING.labels(durable).set(info.num_ack_pending or 0)
        m.CONSUMER_REDELIVERED.labels(durable).set(info.num_redelivered or 0)
    dlq = await js.stream_info(s.STREAM_DEAD_LETTERS)
    m.DEAD_LETTERS.set(dlq.state.messages)


async def poll(js: JetStreamContext, every: float) -> None:
    """Until cancelled."""
    failing = False
    while True:
        try:
            await poll_once(js)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not failing:
                log.warning("JetStream figures not read (kept as they were): %s", e or type(e).__name__)
            failing = True
        await asyncio.sleep(every)
