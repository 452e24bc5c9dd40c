"""The converter's service layer: ConvertRequest in, ConvertResult out (published and counted).

A StructureDefinition the converter cannot read is a RESULT (error set, counted as failed); S3 or
NATS trouble propagates so that the worker NAKs the message with backoff.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from types import SimpleNamespace
from typing import Any, Protocol

import orjson

from fhirschema.converter import ConversionError, convert
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    ConvertRequest,
    ConvertResult,
    ObjectRef,
    Outcome,
    PutSchema,
)
from fhirschema_bus.object_store import ObjectNotFound


class PayloadReader(Protocol):
    async def aget(self, ref: ObjectRef) -> bytes: ...


class Bus(Protocol):
    async def reply(self, subject: str, data: bytes) -> None: ...
    async def store(self, subject: str, data: bytes, msg_id: str) -> None: ...


class JobRecorder(Protocol):
    async def record(self, job_id: str, index: int, outcome: Outcome) -> Any: ...


class ConversionService:
    def __init__(
        self, bus: Bus, jobs: JobRecorder, executor: Executor, *, payloads: PayloadReader | None = None
    ) -> None:
        self.bus, self.jobs, self.executor, self.payloads = bus, jobs, executor, payloads
        self.handled = 0

    async def handle(self, req: ConvertRequest) -> ConvertResult:
        result = await self.convert(req)
        data = result.model_dump_json(by_alias=True, exclude_none=True).encode()
        if req.reply_to:
            await self.bus.reply(req.reply_to, data)
        if req.store and result.schema_ is not None:
            # The storage service consumes this from the work stream; the id keeps it single.
            put = PutSchema(schema_=result.schema_, package=req.package)
            body = put.model_dump_json(by_alias=True, exclude_none=True).encode()
            await self.bus.store(s.STORAGE_PUT_SCHEMA, body, f"put.{req.idempotency_key}")
        await self.bus.store(s.job_result_subject(s.CONVERT_RESULT, req.job_id), data, req.idempotency_key)
        await self.jobs.record(req.job_id, req.index, "failed" if result.error else "valid")
        self.handled += 1
        return result

    async def convert(self, req: ConvertRequest) -> ConvertResult:
        try:
            sd = await self._structure_definition(req)
        except ObjectNotFound as e:
            return ConvertResult(job_id=req.job_id, index=req.index, error=f"payload not found: {e}")
        except ValueError as e:
            return ConvertResult(job_id=req.job_id, index=req.index, error=f"payload is not JSON: {e}")
        loop = asyncio.get_running_loop()
        try:
            schema = await loop.run_in_executor(self.executor, _convert, sd, req.package)
        except ConversionError as e:
            return ConvertResult(job_id=req.job_id, index=req.index, error=str(e))
        except Exception as e:  # a converter bug on this input: retrying gives the same
            return ConvertResult(job_id=req.job_id, index=req.index, error=f"{type(e).__name__}: {e}")
        return ConvertResult(job_id=req.job_id, index=req.index, schema=schema)

    async def _structure_definition(self, req: ConvertRequest) -> Any:
        if req.structure_definition is not None:
            return req.structure_definition
        ref = req.structure_definition_ref
        if ref is None:
            raise ValueError("no structure_definition nor structure_definition_ref")
        if self.payloads is None:
            raise ObjectNotFound(ref.bucket, ref.key)
        return orjson.loads(await self.payloads.aget(ref))


def _convert(sd: Any, package: str | None) -> dict[str, Any]:
    # The engine reads provenance from an object with .name and .version.
    pkg = None
    if package and "#" in package:
        name, version = package.split("#", 1)
        pkg = SimpleNamespace(name=name, version=version)
    return convert(sd, package=pkg)
