"""The converter service end to end on a real NATS (in-process FastStream app)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from converter_service.bootstrap import bootstrap
from nats.aio.client import Client

from fhirschema.context import FhirContext
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import ConvertRequest, ConvertResult, JobKind, JobState, PutSchema
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.servers import RunningServer
from fhirschema_bus.settings import NatsSettings
from fhirschema_bus.worker import WorkerSettings
from tests.services.test_validator_service import FAST_RETRY, R4, running, wait_job

PATIENT_SD = "http://hl7.org/fhir/StructureDefinition/Patient"


@pytest.fixture(scope="module")
def structure_definitions() -> list[dict[str, Any]]:
    ctx = FhirContext.from_specs([R4])
    urls = [
        PATIENT_SD,
        *(f"http://hl7.org/fhir/StructureDefinition/{t}" for t in ("Observation", "HumanName")),
    ]
    return [sd for u in urls if (sd := ctx.resource(u)) is not None]


pytestmark = pytest.mark.servers


def converter(url: str) -> Any:
    return bootstrap(
        nats=NatsSettings(url=url, retry_delays_seconds=FAST_RETRY),
        worker_settings=WorkerSettings(instance=f"conv-{uuid.uuid4().hex[:6]}"),
    )


async def test_convert_one_reply_store_and_put(
    nc: Client, nats_server: RunningServer, structure_definitions: list[dict[str, Any]]
) -> None:
    js = nc.jetstream()
    job_id = uuid.uuid4().hex
    async with running(converter(nats_server.url)):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=2)
        good = ConvertRequest(
            job_id=job_id, structure_definition=structure_definitions[0], store=True,
            package="hl7.fhir.r4.core#4.0.1", reply_to=inbox,
        )  # fmt: skip
        bad = ConvertRequest(
            job_id=job_id, index=1, structure_definition={"resourceType": "Patient"}, reply_to=inbox
        )
        for req in (good, bad):
            await js.publish(s.CONVERT_ONE, req.model_dump_json().encode())
        replies = [ConvertResult.model_validate_json((await sub.next_msg(timeout=10)).data) for _ in range(2)]
    by_index = {r.index: r for r in replies}
    schema = by_index[0].schema_
    assert schema is not None and schema["url"] == PATIENT_SD and by_index[0].error is None
    assert schema.get("package_id") == "hl7.fhir.r4.core#4.0.1"
    assert by_index[1].schema_ is None and "StructureDefinition" in (by_index[1].error or "")

    subject = s.job_result_subject(s.CONVERT_RESULT, job_id)
    info = await js.stream_info(s.STREAM_RESULTS, subjects_filter=subject)
    assert (info.state.subjects or {}).get(subject) == 2
    # The PutSchema waits in the work stream for the storage service (not running here): take it
    # out again so that no other test's storage service picks it up.
    put = await js.get_msg(s.STREAM_REQUESTS, subject=s.STORAGE_PUT_SCHEMA)
    assert PutSchema.model_validate_json(put.data).schema_["url"] == PATIENT_SD
    assert put.headers and put.headers.get("Nats-Msg-Id") == f"put.{job_id}.0"
    await js.delete_msg(s.STREAM_REQUESTS, put.seq)


async def test_convert_batch_counts_job(
    nc: Client, nats_server: RunningServer, structure_definitions: list[dict[str, Any]]
) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    items = [*structure_definitions, {"resourceType": "StructureDefinition"}]
    job = await store.create(JobKind.CONVERT, total=len(items))
    async with running(converter(nats_server.url)):
        for i, sd in enumerate(items):
            req = ConvertRequest(job_id=job.id, index=i, structure_definition=sd)
            await js.publish(s.CONVERT_BATCH_ITEM, req.model_dump_json().encode())
        final = await wait_job(store, job.id, timeout=20)
    assert final.state is JobState.SUCCEEDED
    assert (final.done, final.valid, final.failed) == (len(items), len(items) - 1, 1)
