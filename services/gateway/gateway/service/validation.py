"""Validation use cases: one resource synchronously, batches as jobs, results read back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError

from fhirschema.validator.issues import Issue
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    CHUNK_BYTES,
    HEADER_MSG_ID,
    INLINE_LIMIT,
    InputIssue,
    JobKind,
    JobState,
    JobStatus,
    Outcome,
    ValidateResult,
    result_items,
)
from fhirschema_bus.tracing import outgoing
from gateway.bodies import Item
from gateway.bus import RETRY_AFTER_SECONDS
from gateway.errors import BadRequest, BusUnavailable, Timeout
from gateway.metrics import Metrics
from gateway.service.dispatch import Dispatcher, ReplyTimeout, new_job_id
from gateway.service.readiness import ReadinessGate

log = logging.getLogger("gateway.validation")


@dataclass(frozen=True)
class SyncOutcome:
    job_id: str
    valid: bool
    failed: bool
    outcome: Any


def _message(
    job_id: str,
    index: int,
    kind: str,
    payload: Any,
    profiles: list[str],
    packages: Sequence[str] = (),
    **extra: Any,
) -> bytes:
    msg: dict[str, Any] = {"job_id": job_id, "index": index, "profiles": profiles, **extra}
    if packages:
        msg["packages"] = list(packages)
    msg["resource" if kind == "inline" else "resource_ref"] = payload
    return orjson.dumps(msg)


def _input_issues(issues: Iterable[Issue]) -> list[dict[str, Any]]:
    return [InputIssue.of(i).model_dump(exclude_none=True) for i in issues]


RESULT_FIELDS = {  # what a results line holds, per kind of job
    JobKind.VALIDATE: ("index", "source", "valid", "outcome"),
    JobKind.CONVERT: ("index", "schema", "error", "stored"),
}
RESULT_SUBJECTS = {JobKind.VALIDATE: s.VALIDATE_RESULT, JobKind.CONVERT: s.CONVERT_RESULT}


def _line(result: dict[str, Any], kind: JobKind = JobKind.VALIDATE) -> bytes:
    return orjson.dumps({key: result.get(key) for key in RESULT_FIELDS[kind]})


class ValidationService:
    def __init__(
        self,
        dispatch: Dispatcher,
        metrics: Metrics,
        sync_timeout: float,
        chunk_items: int = 128,
        *,
        readiness: ReadinessGate | None = None,  # None: no gate (conversions only)
    ):
        self.d = dispatch
        self.readiness = readiness
        self.metrics = metrics
        self.sync_timeout = sync_timeout
        self.chunk_items = chunk_items  # batch items per ValidateChunk message (1: one message each)
        dispatch.bus.replies.on_late = self.on_late

    # --- one resource, synchronously --------------------------------------------------------

    async def validate_one(
        self,
        resource: dict[str, Any],
        raw: bytes | None,
        profiles: list[str],
        timeout: float | None = None,
        issues: Sequence[Issue] = (),
        packages: Sequence[str] = (),
    ) -> SyncOutcome:
        """`raw`: the resource's own text, if the client sent it alone; `issues`: the findings of
        that text (repeated keys), which the validator reports first. A resource that goes by S3
        reference travels as `raw`, and the validator finds them itself. No verdict before the
        stack can give one: waits for a ready validator replica, or NotReady (503)."""
        if self.readiness is not None:
            await self.readiness.admit()
        job_id = new_job_id()
        kind, payload = await self.d.payload(job_id, 0, resource, raw)
        extra: dict[str, Any] = {"reply_to": self.d.reply_to(job_id)}
        if issues and (kind == "inline" or raw is None):
            extra["input_issues"] = _input_issues(issues)
        message = _message(job_id, 0, kind, payload, profiles, packages, **extra)
        self.metrics.sync_in_flight.inc()
        try:
            data = await self.d.call(s.VALIDATE_ONE, job_id, message, timeout or self.sync_timeout)
        except ReplyTimeout as t:
            self.metrics.sync_timeouts.inc()
            await self._track_late(t)
            raise Timeout(
                f"no validation result within {timeout or self.sync_timeout:g} s; "
                f"the result will be available at /validate/status/{job_id}",
                extra={"job": job_id, "location": f"/validate/status/{job_id}"},
            ) from None
        finally:
            self.metrics.sync_in_flight.dec()
        result = orjson.loads(data)
        return SyncOutcome(
            job_id, bool(result.get("valid")), bool(result.get("error")), result.get("outcome")
        )

    async def _track_late(self, t: ReplyTimeout) -> None:
        """A job record for the timed-out request, so that its late result can be looked up."""
        jobs = await self.d.jobs()
        with contextlib.suppress(Exception):  # a KV hiccup must not hide the 504
            await jobs.create(JobKind.VALIDATE, 1, job_id=t.job_id, detail={"sync": True})
        late = self.d.settle(t)
        if late is not None:
            await self.on_late(t.job_id, late)

    async def on_late(self, job_id: str, data: bytes) -> None:
        """A reply after its caller gave up: keep it as the job's result and count it."""
        try:
            result = ValidateResult.model_validate_json(data)
        except ValueError:
            return  # e.g. a conversion reply after its caller gave up: nothing to keep
        subject = s.job_result_subject(s.VALIDATE_RESULT, job_id)
        await self.d.bus.js.publish(
            subject, data, headers=outgoing({HEADER_MSG_ID: f"{job_id}.{result.index}"})
        )
        outcome: Outcome = "failed" if result.error else ("valid" if result.valid else "invalid")
        jobs = await self.d.jobs()
        await jobs.record(job_id, result.index, outcome)

    # --- batches ----------------------------------------------------------------------------

    async def submit_batch(
        self,
        items: list[Item],
        profiles: list[str],
        kind: JobKind,
        detail: dict,
        packages: Sequence[str] = (),
    ) -> JobStatus:
        """`packages`: the package context of a validation (ValidateRequest.packages)."""
        for item in items:
            if item.failed is None and not isinstance(item.resource, dict):
                raise BadRequest(f"item {item.source} is not a JSON object (a FHIR resource)")
        if not items:
            raise BadRequest("the batch holds no resources")
        if kind is JobKind.VALIDATE and self.readiness is not None:
            await self.readiness.admit()
        job_id = new_job_id()
        job = await self.d.bus.retrying(
            lambda: self._create(kind, len(items), job_id, detail), "creating the batch's job"
        )
        subject = s.VALIDATE_BATCH_ITEM if kind is JobKind.VALIDATE else s.CONVERT_BATCH_ITEM
        accepted = len(items)
        failed = [item for item in items if item.failed is not None]
        items = [item for item in items if item.failed is None]
        try:
            if failed:  # their text cannot be validated: their results are known now
                await self._record_failed(job_id, failed)
            if kind is JobKind.VALIDATE and self.chunk_items > 1:
                # Chunks are published as they are cut, so validators start on the first one
                # while the rest is still being packed; oversized items follow one by one.
                oversized: list[Item] = []
                await self.d.bus.publish_many(self._chunks(job_id, items, profiles, oversized, packages))
                items = oversized
            messages = []
            for item in items:
                pkind, payload = await self.d.payload(job_id, item.index, item.resource)
                if kind is JobKind.VALIDATE:
                    extra: dict[str, Any] = {"source": item.source}
                    if item.issues:
                        extra["input_issues"] = _input_issues(item.issues)
                    body = _message(job_id, item.index, pkind, payload, profiles, packages, **extra)
                else:
                    key = "structure_definition" if pkind == "inline" else "structure_definition_ref"
                    body = orjson.dumps({"job_id": job_id, "index": item.index, key: payload, **detail})
                messages.append((subject, body, f"{job_id}.{item.index}"))
            await self.d.bus.publish_many(messages)
        except Exception as e:
            # Its items could not be published within the budget: the job says so, with the
            # counts of the results stored so far (validators skip what is left of it).
            error = e.message if isinstance(e, BusUnavailable) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Exception):
                await (await self.d.jobs()).fail(job_id, f"could not enqueue the batch: {error}")
            raise BusUnavailable(
                f"could not enqueue the batch: {error}", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            ) from e
        # All of them, chunked, one by one or failed at the door (was: only the oversized ones).
        self.metrics.batch_items.labels(kind.value).inc(accepted)
        return job

    async def _create(self, kind: JobKind, total: int, job_id: str, detail: dict) -> JobStatus:
        jobs = await self.d.jobs()
        try:
            return await jobs.create(kind, total, job_id=job_id, detail=detail)
        except KeyWrongLastSequenceError:  # an earlier try created it, its answer was lost
            if (job := await jobs.get(job_id)) is None:
                raise
            return job

    async def _record_failed(self, job_id: str, items: list[Item]) -> None:
        """Items whose text cannot be validated (not JSON, nested too deeply): their results,
        the CLI's for the same bytes, stored and counted as failed before the job is announced."""
        subject = s.job_result_subject(s.VALIDATE_RESULT, job_id)
        messages = []
        for item in items:
            assert item.failed is not None
            result = ValidateResult(
                job_id=job_id, index=item.index, valid=False, outcome=item.failed.to_outcome(),
                source=item.source, error=item.failed.issues[0].message,
            )  # fmt: skip
            data = result.model_dump_json(exclude_none=True).encode()
            messages.append((subject, data, f"{job_id}.{item.index}"))
        await self.d.bus.publish_many(messages)
        counts: list[tuple[int, Outcome]] = [(item.index, "failed") for item in items]

        async def record() -> Any:  # counted once however often it is tried (the job's ranges)
            return await (await self.d.jobs()).record_many(job_id, counts)

        await self.d.bus.retrying(record, "counting the batch's failed items")

    def _chunks(
        self,
        job_id: str,
        items: list[Item],
        profiles: list[str],
        oversized: list[Item],
        packages: Sequence[str] = (),
    ) -> Iterator[tuple[str, bytes, str]]:
        """ValidateChunk messages of inline-sized items (each serialized once, spliced into the
        chunk); items too big to travel inline are put in `oversized` (they go by S3 reference)."""
        fixed: dict[str, Any] = {"job_id": job_id, "profiles": profiles}
        if packages:
            fixed["packages"] = list(packages)
        head = orjson.dumps(fixed)[:-1] + b',"items":['
        budget = CHUNK_BYTES - len(head) - 2
        parts: list[bytes] = []
        size, first = 0, 0
        for item in items:
            fields = {"index": item.index, "source": item.source, "resource": item.resource}
            if item.issues:
                fields["input_issues"] = _input_issues(item.issues)
            part = orjson.dumps(fields)
            if len(part) > INLINE_LIMIT:
                oversized.append(item)
                continue
            if parts and (len(parts) >= self.chunk_items or size + len(part) + 1 > budget):
                # Msg id: the job and the chunk's first index (a chunk never changes once cut).
                yield s.VALIDATE_BATCH_ITEM, head + b",".join(parts) + b"]}", f"{job_id}.c{first}"
                parts, size = [], 0
            if not parts:
                first = item.index
            parts.append(part)
            size += len(part) + 1
        if parts:
            yield s.VALIDATE_BATCH_ITEM, head + b",".join(parts) + b"]}", f"{job_id}.c{first}"

    # --- results ----------------------------------------------------------------------------

    async def results(self, job: JobStatus, wait: float = 0.0) -> AsyncIterator[bytes]:
        """NDJSON lines: the assembled S3 object when there is one, else live from the stream."""
        if job.results is not None:
            async for line in self.d.objects.iter_lines(job.results):
                with contextlib.suppress(orjson.JSONDecodeError):
                    yield _line(orjson.loads(line), job.kind) + b"\n"
            return
        async for line in self._live(job, wait):
            yield line

    async def _live(self, job: JobStatus, wait: float) -> AsyncIterator[bytes]:
        """Read the job's results subject: single ValidateResults and ValidateResultChunks, each
        item once, yielded in index order (items that arrive early are held back until the
        ones before them came; whatever is missing at the end, the rest follows sorted)."""
        js = self.d.bus.js
        subject = s.job_result_subject(RESULT_SUBJECTS[job.kind], job.id)
        info = await js.stream_info(s.STREAM_RESULTS, subjects_filter=subject)
        messages = (info.state.subjects or {}).get(subject, 0)  # messages, not items (chunks)
        if messages == 0 and not (wait > 0 and job.total):
            return
        # Done when every item is seen (a succeeded job has them all stored), or when every
        # message stored at the start is read and we are not asked to wait for more.
        complete = job.state is JobState.SUCCEEDED or wait > 0
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        seen: set[int] = set()
        read: set[int] = set()  # stream sequences: an ordered consumer that resets redelivers
        held: dict[int, dict[str, Any]] = {}
        next_index = 0
        try:
            while len(seen) < job.total if complete else len(read) < messages:
                try:
                    timeout = wait if len(read) >= messages and wait > 0 else 5.0
                    msg = await sub.next_msg(timeout=timeout)
                except TimeoutError:
                    break
                try:
                    read.add(msg.metadata.sequence.stream)
                except Exception:  # no JetStream metadata: count the message anyway
                    read.add(-len(read) - 1)
                for result in result_items(orjson.loads(msg.data)):
                    index = result.get("index", 0)
                    if index in seen:
                        continue  # at least once on the bus, once in the output
                    seen.add(index)
                    held[index] = result
                while next_index in held:
                    yield _line(held.pop(next_index), job.kind) + b"\n"
                    next_index += 1
            for index in sorted(held):
                yield _line(held[index], job.kind) + b"\n"
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
