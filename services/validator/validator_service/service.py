"""The validator's service layer: ValidateRequest in, ValidateResult out (published and counted).

An invalid FHIR resource is a RESULT (valid=false), never an error. Errors that retrying can fix
(storage, S3, Redis or NATS unreachable) propagate, so the worker NAKs the message with backoff.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import orjson

from fhirschema.validator import Validator
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    HEADER_MSG_ID,
    ObjectRef,
    Outcome,
    ValidateOptions,
    ValidateRequest,
    ValidateResult,
)
from fhirschema_bus.object_store import ObjectNotFound

MAX_RESULT_BYTES = 900_000  # NATS' default max_payload is 1 MB
MAX_ISSUES = 1000

# --- ports ------------------------------------------------------------------------------------


class PayloadReader(Protocol):
    async def aget(self, ref: ObjectRef) -> bytes: ...


class ResultSink(Protocol):
    async def reply(self, subject: str, data: bytes) -> None: ...
    async def store(self, subject: str, data: bytes, msg_id: str) -> None: ...


class JobRecorder(Protocol):
    async def get(self, job_id: str) -> Any: ...
    async def record(self, job_id: str, index: int, outcome: Outcome) -> Any: ...


ValidatorFactory = Callable[[ValidateOptions], Validator]

# --- compiled validators ----------------------------------------------------------------------


class ValidatorPool:
    """Compiled Validators in an LRU keyed by (profiles, options): a Validator caches its plans,
    so reusing it is what makes the second validation of a profile cheap."""

    def __init__(self, factory: ValidatorFactory, size: int = 32) -> None:
        self._factory, self._size = factory, size
        self._lru: OrderedDict[tuple[Any, ...], Validator] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, profiles: list[str], options: ValidateOptions) -> Validator:
        key = (tuple(sorted(profiles)), options.invariants, options.strict)
        with self._lock:
            if (v := self._lru.get(key)) is not None:
                self._lru.move_to_end(key)
                return v
            v = self._lru[key] = self._factory(options)
            while len(self._lru) > self._size:
                self._lru.popitem(last=False)
            return v

    def __len__(self) -> int:
        return len(self._lru)


# --- the handler ------------------------------------------------------------------------------


class ValidationService:
    def __init__(
        self,
        validators: ValidatorPool,
        results: ResultSink,
        jobs: JobRecorder,
        executor: Executor,
        *,
        payloads: PayloadReader | None = None,
        instance: str | None = None,
        transient: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.validators, self.results, self.jobs = validators, results, jobs
        self.executor, self.payloads, self.instance = executor, payloads, instance
        self.transient = transient  # engine-side errors to retry (e.g. SourceUnavailable)
        self.handled = 0  # for heartbeats and tests

    async def handle(self, req: ValidateRequest) -> ValidateResult:
        result = await self.validate(req)
        data = result.model_dump_json(exclude_none=True).encode()
        if len(data) > MAX_RESULT_BYTES:
            data = _truncated(result).model_dump_json(exclude_none=True).encode()
        if req.reply_to:
            await self.results.reply(req.reply_to, data)  # first: a caller is waiting
        # Stored once even when this item is redelivered: the RESULTS stream de-duplicates.
        subject = s.job_result_subject(s.VALIDATE_RESULT, req.job_id)
        # Both must be done before the ack, in any order (each is idempotent): run them together.
        await asyncio.gather(self.results.store(subject, data, req.idempotency_key), self._count(req, result))
        self.handled += 1
        return result

    async def _count(self, req: ValidateRequest, result: ValidateResult) -> None:
        if req.reply_to and await self.jobs.get(req.job_id) is None:
            # A synchronous request that no job tracks (the gateway creates one only when it
            # gives up waiting): skip the idempotency marker, one KV write per request.
            return
        await self.jobs.record(req.job_id, req.index, outcome_of(result))

    async def validate(self, req: ValidateRequest) -> ValidateResult:
        try:
            resource = req.resource if req.resource is not None else await self._fetch(req)
        except ObjectNotFound as e:
            return self._failed(req, f"payload not found: {e}")
        except ValueError as e:
            return self._failed(req, f"payload is not JSON: {e}")
        validator = self.validators.get(req.profiles, req.options)
        loop = asyncio.get_running_loop()
        try:
            res = await loop.run_in_executor(self.executor, validator.validate, resource, req.profiles)
        except self.transient:
            raise
        except Exception as e:  # an engine failure on this input: retrying gives the same
            return self._failed(req, f"validator error: {type(e).__name__}: {e}")
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        return ValidateResult(
            job_id=req.job_id, index=req.index, valid=res.valid, outcome=res.to_outcome(),
            source=req.source, resource_type=rtype if isinstance(rtype, str) else None,
            validator=self.instance,
        )  # fmt: skip

    async def _fetch(self, req: ValidateRequest) -> Any:
        assert req.resource_ref is not None
        if self.payloads is None:
            raise ObjectNotFound(req.resource_ref.bucket, req.resource_ref.key)
        return orjson.loads(await self.payloads.aget(req.resource_ref))

    def _failed(self, req: ValidateRequest, error: str) -> ValidateResult:
        return ValidateResult(
            job_id=req.job_id, index=req.index, valid=False, outcome=error_outcome(error),
            source=req.source, error=error, validator=self.instance,
        )  # fmt: skip


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


def error_outcome(message: str) -> dict[str, Any]:
    issue = {"severity": "fatal", "code": "exception", "diagnostics": message}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# --- adapters ---------------------------------------------------------------------------------


class NatsResults:
    """ResultSink over NATS: core publish for the waiting caller, JetStream for the record."""

    def __init__(self, nc: Any, js: Any) -> None:
        self._nc, self._js = nc, js

    async def reply(self, subject: str, data: bytes) -> None:
        await self._nc.publish(subject, data)

    async def store(self, subject: str, data: bytes, msg_id: str) -> None:
        await self._js.publish(subject, data, headers={HEADER_MSG_ID: msg_id})
