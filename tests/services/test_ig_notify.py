"""Failure notices: the webhook's retries against a local receiver; on real servers a failed
package gives an IngestFailure on the bus and a POST to the webhook."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ig_ingest.app import bootstrap
from ig_ingest.notify import Notifier
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import SecretStr
from storage_service.app import Storage

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    IngestFailure,
    IngestJob,
    IngestPackageStatus,
    IngestRequest,
    PackageState,
)
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import IngestSettings, NatsSettings, PackageSettings
from fhirschema_bus.worker import WorkerSettings
from tests.services.registry_server import make_package, profile, serve_registry
from tests.services.test_ig_ingest import ingest_job


@dataclass
class Receiver:
    url: str = ""
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    bodies: list[dict] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec.bodies.append(json.loads(body))
            rec.auth.append(self.headers.get("Authorization"))
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rec
    server.shutdown()
    server.server_close()


def failed_job() -> IngestJob:
    return IngestJob(job="j1", packages=[
        IngestPackageStatus(name="a", version="1.0.0", requested="a", state=PackageState.FAILED, error="boom"),
        IngestPackageStatus(name="b", version="1.0.0", requested="b", state=PackageState.SUCCEEDED),
    ])  # fmt: skip


async def test_webhook_retried_then_delivered(receiver: Receiver) -> None:
    published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
        published.append((subject, body, headers))

    receiver.statuses = [503, 429]
    n = Notifier(publish, receiver.url, token="t0k", attempts=4, backoff=0.01)
    event = await n.job_finished(failed_job(), scheduled=True)
    assert event is not None and [p.name for p in event.failed] == ["a"] and event.scheduled
    await asyncio.gather(*n.tasks)
    assert len(receiver.bodies) == 3 and receiver.bodies[-1]["job"] == "j1"  # 503, 429, then 200
    assert receiver.auth[-1] == "Bearer t0k"
    assert (
        published[0][0] == s.INGEST_FAILED and IngestFailure.model_validate_json(published[0][1]).job == "j1"
    )
    receiver.statuses = [400]
    assert not await n.post(b"{}")  # refused: not retried
    assert len(receiver.bodies) == 4
    ok = IngestJob(job="j2", packages=[failed_job().packages[1]])
    assert await n.job_finished(ok, scheduled=False) is None and len(published) == 1  # nothing failed
    await n.aclose()


async def test_failed_ingest_notifies_bus_and_webhook(
    storage: Storage, nats_server: RunningServer, nc: Client, receiver: Receiver, tmp_path: Path
) -> None:
    events: list[IngestFailure] = []

    async def got(m: Msg) -> None:
        events.append(IngestFailure.model_validate_json(m.data))

    sub = await nc.subscribe(s.INGEST_FAILED, cb=got)
    with serve_registry() as reg:
        reg.add("example.good", "1.0.0", make_package("example.good", "1.0.0", resources=[profile("g")]))
        reg.add("example.bad", "1.0.0", make_package("example.bad", "1.0.0"))
        reg.corrupt = {"example.bad#1.0.0"}
        w = bootstrap(
            nats=NatsSettings(url=nats_server.url), s3=storage.store.settings,
            packages=PackageSettings(package_sources=reg.base, packages=""),
            ingest=IngestSettings(ci_build_url="", webhook_url=receiver.url, webhook_token=SecretStr("s3cr3t")),
            worker_settings=WorkerSettings(heartbeat_seconds=60), store=ObjectStore(storage.store.settings),
        )  # fmt: skip
        await w.app.start()
        try:
            req = IngestRequest(job_id=uuid.uuid4().hex, packages=["example.good", "example.bad"])
            await nc.jetstream().publish(s.INGEST_PACKAGE, req.model_dump_json().encode())
            job = await ingest_job(nc, req.job_id)
            for _ in range(100):
                if events and receiver.bodies:
                    break
                await asyncio.sleep(0.1)
            assert [e.job for e in events] == [job.job]
            assert [p.name for p in events[0].failed] == ["example.bad"] and events[0].failed[0].error
            assert receiver.bodies[0]["job"] == job.job and receiver.auth[0] == "Bearer s3cr3t"
            assert receiver.bodies[0]["failed"][0]["name"] == "example.bad"
        finally:
            await w.app.stop()
            await sub.unsubscribe()
