"""The validator's service layer: ValidateRequest in, ValidateResult out (published and counted).

An invalid FHIR resource is a RESULT (valid=false), never an error. A package context the
repository does not hold is a failed item saying so (never a verdict). Errors that retrying can
fix (S3 or NATS unreachable) propagate, so the worker NAKs the message with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

import orjson

from fhirschema import jsoninput
from fhirschema.jsoninput import JsonInputError, ParsedInput
from fhirschema.validator import ValidationResult, Validator
from fhirschema_bus import metrics as m
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    JobState,
    JobStatus,
    ObjectRef,
    Outcome,
    ValidateChunk,
    ValidateOptions,
    ValidateRequest,
    ValidateResult,
)
from fhirschema_bus.object_store import ObjectNotFound

from .contexts import UnknownPackage

MAX_RESULT_BYTES = 900_000  # NATS' default max_payload is 1 MB
MAX_ISSUES = 1000
STOPPED_RECHECK_SECONDS = 1.0
STOPPED_MEMO_SIZE = 1024

# --- ports ------------------------------------------------------------------------------------


class PayloadReader(Protocol):
    async def aget(self, ref: ObjectRef) -> bytes: ...


class ResultSink(Protocol):
    async def reply(self, subject: str, data: bytes) -> None: ...
    async def store(self, subject: str, data: bytes, msg_id: str) -> None: ...
    async def store_many(self, subject: str, items: list[tuple[bytes, str]]) -> None: ...


class JobRecorder(Protocol):
    async def get(self, job_id: str) -> JobStatus | None: ...
    async def record(self, job_id: str, index: int, outcome: Outcome) -> Any: ...
    async def record_many(self, job_id: str, items: list[tuple[int, Outcome]]) -> Any: ...


class Validators(Protocol):
    """Compiled Validators by package context (contexts.Contexts): raises UnknownPackage."""

    def validator(
        self, packages: Sequence[str], profiles: Sequence[str], options: ValidateOptions
    ) -> Validator: ...

    def __len__(self) -> int: ...


# --- the handler ------------------------------------------------------------------------------


class ValidationService:
    def __init__(
        self,
        validators: Validators,
        results: ResultSink,
        jobs: JobRecorder,
        executor: Executor,
        *,
        payloads: PayloadReader | None = None,
        instance: str | None = None,
    ) -> None:
        self.validators, self.results, self.jobs = validators, results, jobs
        self.executor, self.payloads, self.instance = executor, payloads, instance
        self.handled = 0  # for heartbeats and tests
        self.skipped = 0  # items of cancelled jobs
        self._stopped: OrderedDict[str, tuple[bool, float]] = OrderedDict()  # job → (stopped, asked at)

    async def handle(self, req: ValidateRequest) -> ValidateResult | None:
        """Validate, reply, store, count; None when the item's job was cancelled (or failed)."""
        if not req.reply_to and await self._job_stopped(req.job_id):
            self.skipped += 1
            return None
        result = await self.validate(req)
        m.VALIDATIONS_BY_RESULT[outcome_of(result)].inc()
        data = result.model_dump_json(exclude_none=True).encode()
        if len(data) > MAX_RESULT_BYTES:
            data = _truncated(result).model_dump_json(exclude_none=True).encode()
        if req.reply_to:
            await self.results.reply(req.reply_to, data)  # first: a caller is waiting
        # Stored once even when this item is redelivered: the RESULTS stream de-duplicates.
        subject = s.job_result_subject(s.VALIDATE_RESULT, req.job_id)
        # Stored, then counted: a job that reads "succeeded" has every result readable.
        await self.results.store(subject, data, req.idempotency_key)
        await self._count(req, result)
        self.handled += 1
        return result

    async def handle_chunk(self, chunk: ValidateChunk) -> int:
        """Validate every item of a chunk (one executor call), store the results as one
        ValidateResultChunk message (several when over MAX_RESULT_BYTES; msg id
        "<job>.<first>-<last>") and count them in one job update. A transient error NAKs the
        whole chunk; the redelivery stores and counts nothing twice. A chunk of a cancelled job
        is skipped (0)."""
        if await self._job_stopped(chunk.job_id):
            self.skipped += len(chunk.items)
            return 0
        loop = asyncio.get_running_loop()
        lines = await loop.run_in_executor(self.executor, self._validate_chunk, chunk)
        subject = s.job_result_subject(s.VALIDATE_RESULT, chunk.job_id)
        indexes = [item.index for item in chunk.items]
        stored = result_chunks(chunk.job_id, indexes, [data for data, _ in lines])
        counts = [(index, outcome) for index, (_, outcome) in zip(indexes, lines, strict=True)]
        for outcome in m.RESULTS:
            if n := sum(1 for _, o in lines if o == outcome):
                m.VALIDATIONS_BY_RESULT[outcome].inc(n)
        if len(stored) == 1:
            store = self.results.store(subject, *stored[0])
        else:
            store = self.results.store_many(subject, stored)
        await store  # then counted: a job that reads "succeeded" has every result readable
        await self.jobs.record_many(chunk.job_id, counts)
        self.handled += len(lines)
        return len(lines)

    def _validate_chunk(self, chunk: ValidateChunk) -> list[tuple[bytes, Outcome]]:
        # In the worker thread: the context, the engine, and encoding the results (orjson, no
        # model per item).
        out: list[tuple[bytes, Outcome]] = []
        try:
            validator: Validator | None = self.validators.validator(
                chunk.packages, chunk.profiles, chunk.options
            )
            unknown = ""
        except UnknownPackage as e:
            validator, unknown = None, str(e)
        for item in chunk.items:
            result: dict[str, Any] = {"job_id": chunk.job_id, "index": item.index}
            try:
                if validator is None:
                    raise UnknownPackage(unknown)
                t0 = time.perf_counter()
                res = validator.validate(item.resource, chunk.profiles)
                m.ENGINE_SECONDS.observe(time.perf_counter() - t0)
                if item.input_issues:  # the JSON text's own findings first, as in the CLI
                    res = ParsedInput(item.resource, [i.issue() for i in item.input_issues]).result(res)
            except UnknownPackage as e:
                result |= {"valid": False, "outcome": error_outcome(str(e), "not-found"), "error": str(e)}
                outcome: Outcome = "failed"
            except Exception as e:  # an engine failure on this input: retrying gives the same
                error = f"validator error: {type(e).__name__}: {e}"
                result |= {"valid": False, "outcome": error_outcome(error), "error": error}
                outcome = "failed"
            else:
                result |= {"valid": res.valid, "outcome": res.to_outcome()}
                if isinstance(rtype := item.resource.get("resourceType"), str):
                    result["resource_type"] = rtype
                outcome = "valid" if res.valid else "invalid"
            if item.source is not None:
                result["source"] = item.source
            if self.instance is not None:
                result["validator"] = self.instance
            data = orjson.dumps(result)
            if len(data) > MAX_RESULT_BYTES:
                data = (
                    _truncated(ValidateResult.model_validate(result))
                    .model_dump_json(exclude_none=True)
                    .encode()
                )
            out.append((data, outcome))
        return out

    async def _job_stopped(self, job_id: str) -> bool:
        """Was the job cancelled (or has it failed)? Its remaining items are not worth validating.
        Asked of the job store at most once per STOPPED_RECHECK_SECONDS per job, so a batch's
        items cost no extra round trip each; a cancel takes effect within that time."""
        now = time.monotonic()
        known = self._stopped.get(job_id)
        if known is not None and now - known[1] < STOPPED_RECHECK_SECONDS:
            return known[0]
        job = await self.jobs.get(job_id)
        stopped = job is not None and job.state in (JobState.CANCELLED, JobState.FAILED)
        self._stopped[job_id] = (stopped, now)
        self._stopped.move_to_end(job_id)
        while len(self._stopped) > STOPPED_MEMO_SIZE:
            self._stopped.popitem(last=False)
        return stopped

    async def _count(self, req: ValidateRequest, result: ValidateResult) -> None:
        if req.reply_to:
            # A synchronous request: its caller (the gateway) owns any job for it — it creates
            # one only when it gives up waiting, and counts the reply that arrives late itself.
            return
        await self.jobs.record(req.job_id, req.index, outcome_of(result))

    async def validate(self, req: ValidateRequest) -> ValidateResult:
        issues = [i.issue() for i in req.input_issues]  # found by the publisher, which parsed the text
        if req.resource is not None:
            parsed = ParsedInput(req.resource, issues)
        else:  # the referenced bytes, parsed here as the CLI parses them
            try:
                parsed = jsoninput.parse(await self._fetch(req))
            except ObjectNotFound as e:
                return self._failed(req, f"payload not found: {e}")
            except JsonInputError as e:
                return self._failed(req, f"payload cannot be validated: {e}", e.result().to_outcome())
            parsed = ParsedInput(parsed.value, issues + parsed.issues)
        resource = parsed.value
        loop = asyncio.get_running_loop()
        try:
            res = await loop.run_in_executor(self.executor, self._validate_one, resource, req)
        except UnknownPackage as e:
            return self._failed(req, str(e), error_outcome(str(e), "not-found"))
        except Exception as e:  # an engine failure on this input: retrying gives the same
            return self._failed(req, f"validator error: {type(e).__name__}: {e}")
        res = parsed.result(res)
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        return ValidateResult(
            job_id=req.job_id, index=req.index, valid=res.valid, outcome=res.to_outcome(),
            source=req.source, resource_type=rtype if isinstance(rtype, str) else None,
            validator=self.instance,
        )  # fmt: skip

    def _validate_one(self, resource: Any, req: ValidateRequest) -> ValidationResult:
        validator = self.validators.validator(req.packages, req.profiles, req.options)
        t0 = time.perf_counter()
        try:
            return validator.validate(resource, req.profiles)
        finally:
            m.ENGINE_SECONDS.observe(time.perf_counter() - t0)

    async def _fetch(self, req: ValidateRequest) -> bytes:
        assert req.resource_ref is not None
        if self.payloads is None:
            raise ObjectNotFound(req.resource_ref.bucket, req.resource_ref.key)
        return await self.payloads.aget(req.resource_ref)

    def _failed(
        self, req: ValidateRequest, error: str, outcome: dict[str, Any] | None = None
    ) -> ValidateResult:
        return ValidateResult(
            job_id=req.job_id, index=req.index, valid=False, outcome=outcome or error_outcome(error),
            source=req.source, error=error, validator=self.instance,
        )  # fmt: skip


def result_chunks(
    job_id: str, indexes: list[int], results: list[bytes], limit: int = MAX_RESULT_BYTES
) -> list[tuple[bytes, str]]:
    """Encoded results (each under `limit`) spliced into ValidateResultChunk messages of at most
    `limit` bytes, in order: [(message, msg id "<job>.<first index>-<last index>"), ...]."""
    head = orjson.dumps({"job_id": job_id})[:-1] + b',"results":['
    out: list[tuple[bytes, str]] = []
    parts: list[bytes] = []
    size, first = len(head) + 2, 0
    for k, data in enumerate(results):
        if parts and size + len(data) + 1 > limit:
            out.append((head + b",".join(parts) + b"]}", f"{job_id}.{indexes[first]}-{indexes[k - 1]}"))
            parts, size, first = [], len(head) + 2, k
        parts.append(data)
        size += len(data) + 1
    if parts:
        out.append((head + b",".join(parts) + b"]}", f"{job_id}.{indexes[first]}-{indexes[-1]}"))
    return out


def _truncated(result: ValidateResult) -> ValidateResult:
    """Keep a result under NATS' 1 MB message limit: the first issues and a note how many."""
    issues = result.outcome.get("issue", [])
    keep = issues[:MAX_ISSUES]
    note = {"severity": "information", "code": "too-costly"}
    note["diagnostics"] = f"{len(issues) - len(keep)} more issues not shown (result too large)"
    outcome = {**result.outcome, "issue": [*keep, note]}
    return result.model_copy(update={"outcome": outcome})


def outcome_of(result: ValidateResult) -> Outcome:
    if result.error is not None:
        return "failed"
    return "valid" if result.valid else "invalid"


def error_outcome(message: str, code: str = "exception") -> dict[str, Any]:
    issue = {"severity": "fatal", "code": code, "diagnostics": message}
    return {"resourceType": "OperationOutcome", "issue": [issue]}
