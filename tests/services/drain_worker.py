"""A worker on the shared `Worker` and entry point, for the lifecycle tests: `python -m
tests.services.drain_worker` holds each message for `seconds` when its instance is the one named
in it (else 0.05 s), then announces it on `draintest.done` (core NATS) and is acked."""

from __future__ import annotations

import asyncio

import orjson
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, PullSub
from pydantic import BaseModel

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import run_worker
from fhirschema_bus.settings import LogSettings, NatsSettings
from fhirschema_bus.worker import Worker, WorkerSettings

STREAM, SUBJECT, DURABLE, DONE = "DRAINTEST", "draintest.work", "draintest", "draintest.done"
CONFIG = ServiceConfig("drain_worker", LogSettings, NatsSettings, WorkerSettings)


class Hold(BaseModel):
    id: str
    seconds: float
    instance: str  # the instance that holds it for `seconds`


def build(nats: NatsSettings, settings: WorkerSettings) -> Worker:
    worker = Worker("drain-test", nats=nats, settings=settings)

    @worker.broker.subscriber(
        SUBJECT, stream=JStream(STREAM, declare=False), durable=DURABLE,
        pull_sub=PullSub(batch_size=settings.fetch_batch, timeout=1.0), ack_policy=AckPolicy.MANUAL,
    )  # fmt: skip
    async def work(msg: Hold) -> None:
        await asyncio.sleep(msg.seconds if msg.instance == worker.instance else 0.05)
        done = {"id": msg.id, "instance": worker.instance}
        await worker.connection.publish(DONE, orjson.dumps(done))

    return worker


if __name__ == "__main__":
    run_worker(CONFIG, lambda c: build(c.get(NatsSettings), c.get(WorkerSettings)))
