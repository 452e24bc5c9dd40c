"""Batch results: when a job finishes, its results (stream FHIRSCHEMA_RESULTS, subject
`fhirschema.result.<kind>.<job>`) become one NDJSON object `<job>.ndjson` in bucket_results, and
the job's status in KV gets `results` (compare-and-set, other services update it too).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import JobKind, JobStatus, ObjectRef, result_items
from fhirschema_bus.object_store import ObjectStore, ObjectStoreUnavailable

log = logging.getLogger("storage.results")
S3_OUTAGE_BUDGET = 90.0  # per delivery; under the results consumer's ack_wait (120 s)
RESULT_BASE = {JobKind.VALIDATE: s.VALIDATE_RESULT, JobKind.CONVERT: s.CONVERT_RESULT}


class ResultAssembler:
    def __init__(self, js: JetStreamContext, store: ObjectStore, bucket: str) -> None:
        self.js = js
        self.store = store
        self.bucket = bucket

    async def assemble_when_s3_answers(
        self, job_id: str, budget: float = S3_OUTAGE_BUDGET
    ) -> ObjectRef | None:
        """`assemble`, retried while S3 is unavailable for up to `budget` seconds: a job that
        finished during an S3 outage is assembled once S3 is back (the event's few redeliveries
        alone, 22 s of backoff, ended in the dead-letter stream after a 45 s outage)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(ObjectStoreUnavailable), stop=stop_after_delay(budget),
            wait=wait_exponential(multiplier=0.5, max=5.0), reraise=True,
        ):  # fmt: skip
            with attempt:
                return await self.assemble(job_id)
        return None  # not reached: the last attempt returns or raises

    async def assemble(self, job_id: str) -> ObjectRef | None:
        """Idempotent: a job whose status already names its results is left alone."""
        kv = await self.js.key_value(s.KV_JOBS)
        try:
            entry = await kv.get(job_id)
        except KeyNotFoundError:
            log.warning("job %s: no status in KV, results not assembled", job_id)
            return None
        job = JobStatus.model_validate_json(entry.value or b"{}")
        if job.results is not None or job.kind not in RESULT_BASE:
            return job.results
        lines = await self.read_results(s.job_result_subject(RESULT_BASE[job.kind], job_id))
        key = f"{job_id}.ndjson"
        ref = await self.store.aput_bytes(
            self.bucket, key, b"".join(ln + b"\n" for ln in lines), "application/x-ndjson"
        )
        await self._set_results(job_id, ref)
        log.info("job %s: %d results -> s3://%s/%s", job_id, len(lines), ref.bucket, ref.key)
        return ref

    async def read_results(self, subject: str) -> list[bytes]:
        """Every result of one job, once per item index, in index order; a message is a single
        result or a ValidateResultChunk (its items become lines of their own)."""
        info = await self.js.stream_info(s.STREAM_RESULTS, subjects_filter=subject)
        expected = (info.state.subjects or {}).get(subject, 0)
        if not expected:
            return []
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
        )
        sub = await self.js.pull_subscribe(subject, stream=s.STREAM_RESULTS, config=cfg)
        by_index: dict[int, bytes] = {}
        seen = 0
        try:
            while seen < expected:
                try:
                    msgs = await sub.fetch(batch=min(1000, expected - seen), timeout=2.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for m in msgs:
                    seen += 1
                    try:
                        message = orjson.loads(m.data)
                    except orjson.JSONDecodeError:
                        by_index.setdefault(-seen, m.data)
                        continue
                    items = result_items(message)
                    if len(items) == 1 and items[0] is message:  # a single result: kept as sent
                        self._keep(by_index, message, m.data, -seen)
                    else:  # a ValidateResultChunk: one line per item
                        for k, item in enumerate(items):
                            self._keep(by_index, item, None, -seen * 100_000 - k)
        finally:
            await sub.unsubscribe()
        return [by_index[i] for i in sorted(by_index)]

    @staticmethod
    def _keep(by_index: dict[int, bytes], result: object, data: bytes | None, fallback: int) -> None:
        try:
            idx = int(result.get("index", fallback))  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError):
            idx = fallback
        if idx not in by_index:
            by_index[idx] = data if data is not None else orjson.dumps(result)

    async def _set_results(self, job_id: str, ref: ObjectRef) -> None:
        kv = await self.js.key_value(s.KV_JOBS)
        for _ in range(100):
            entry = await kv.get(job_id)
            job = JobStatus.model_validate_json(entry.value or b"{}")
            job.results = ref
            try:
                await kv.update(job_id, job.model_dump_json().encode(), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.01)
        raise RuntimeError(f"job {job_id}: could not set results (too many concurrent updates)")
