"""Message contracts: pydantic models defined once, imported by publishers and consumers.

Messages stay well under NATS' 1 MB default. A resource larger than `INLINE_LIMIT` bytes travels
by reference: the publisher stores it in S3 and sends `resource_ref` (bucket/key) instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INLINE_LIMIT = 512 * 1024  # bytes of JSON; bigger payloads go by S3 reference
CHUNK_BYTES = 768 * 1024  # a ValidateChunk message stays under this (NATS' limit: 1 MB)
HEADER_MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication (effect-once on publish)
# FastStream's correlation id; publishers set it (to the message id) so that consumers need not
# mint a uuid4 per message (a getrandom syscall each, expensive in sandboxed kernels).
HEADER_CORRELATION_ID = "correlation_id"


def now() -> datetime:
    return datetime.now(UTC)


class ObjectRef(BaseModel):
    """An object in the S3 store."""

    bucket: str
    key: str


class JobKind(StrEnum):
    VALIDATE = "validate"
    CONVERT = "convert"
    INGEST = "ingest"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# --- validation -------------------------------------------------------------------------------


class ValidateOptions(BaseModel):
    invariants: bool = True
    strict: bool = False


class ValidateRequest(BaseModel):
    """One resource to validate. `index` is its position in the job (0 for single requests)."""

    job_id: str
    index: int = 0
    resource: dict[str, Any] | None = None
    resource_ref: ObjectRef | None = None
    profiles: list[str] = Field(default_factory=list)
    options: ValidateOptions = Field(default_factory=ValidateOptions)
    source: str | None = None  # where the item came from (file:line) — echoed in the result
    reply_to: str | None = None  # core NATS subject awaiting the result (synchronous POST /validate)

    @model_validator(mode="after")
    def _one_payload(self) -> ValidateRequest:
        if (self.resource is None) == (self.resource_ref is None):
            raise ValueError("exactly one of resource / resource_ref is required")
        return self

    @property
    def idempotency_key(self) -> str:
        return f"{self.job_id}.{self.index}"


class ChunkItem(BaseModel):
    index: int
    resource: dict[str, Any]
    source: str | None = None


class ValidateChunk(BaseModel):
    """Several items of one batch job in one message, on the batch subject (VALIDATE_BATCH_ITEM).

    The gateway packs a batch's inline resources into chunks (under `CHUNK_BYTES`): one fetch,
    one ack and one job-count write per chunk instead of per resource. Its results are published
    as ValidateResultChunk messages (one per chunk unless too large), each item counted once."""

    job_id: str
    items: list[ChunkItem]
    profiles: list[str] = Field(default_factory=list)
    options: ValidateOptions = Field(default_factory=ValidateOptions)


class ValidateResult(BaseModel):
    job_id: str
    index: int = 0
    valid: bool
    outcome: dict[str, Any]  # FHIR OperationOutcome
    source: str | None = None
    resource_type: str | None = None
    error: str | None = None  # set when the item could not be validated at all (counted as failed)
    validator: str | None = None  # instance that produced it


class ValidateResultChunk(BaseModel):
    """The results of a ValidateChunk (in index order) as ONE message on the results subject
    (`fhirschema.result.validate.<job>`), msg id "<job>.<first index>-<last index>"; split into
    several such messages when the encoded results would exceed ~900 KB. Readers of the results
    subject accept both this and a single ValidateResult (single items, POST /validate):
    see `result_items`."""

    job_id: str
    results: list[ValidateResult]


def result_items(message: Any) -> list[Any]:
    """The result objects in one decoded message of a results subject: a ValidateResultChunk
    gives its `results`, anything else (ValidateResult, ConvertResult) is one result."""
    if isinstance(message, dict) and isinstance(items := message.get("results"), list):
        return items
    return [message]


# --- conversion -------------------------------------------------------------------------------


class ConvertRequest(BaseModel):
    job_id: str
    index: int = 0
    structure_definition: dict[str, Any] | None = None
    structure_definition_ref: ObjectRef | None = None
    store: bool = False  # also put the schema into the repository
    package: str | None = None  # name#version provenance when storing
    reply_to: str | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.job_id}.{self.index}"


class ConvertResult(BaseModel):
    job_id: str
    index: int = 0
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    error: str | None = None
    stored: ObjectRef | None = None

    model_config = ConfigDict(populate_by_name=True)


# --- packages / ingest -----------------------------------------------------------------------


class IngestRequest(BaseModel):
    """Load one package (`name#version`) from the configured sources into the repository."""

    job_id: str
    package: str
    sources: list[str] = Field(default_factory=list)  # override FHIRSCHEMA_PACKAGE_SOURCES


class SchemaRecord(BaseModel):
    """The repository's index entry for one stored FHIRSchema."""

    id: str  # stable id: "<package>#<version>/<schema name>" or a slug for uploads
    url: str
    version: str | None = None
    type: str | None = None
    kind: str | None = None
    derivation: str | None = None
    package: str | None = None  # name#version
    object: ObjectRef
    updated: datetime = Field(default_factory=now)


class PutSchema(BaseModel):
    schema_: dict[str, Any] = Field(alias="schema")
    package: str | None = None
    id: str | None = None

    model_config = ConfigDict(populate_by_name=True)


class IndexPackage(BaseModel):
    """Storage request/reply: index the canonical resources (StructureDefinition, ValueSet,
    CodeSystem, ...) of a package tarball already stored in S3, so STORAGE_GET_RESOURCE finds them
    by url. Resources travel inside the tarball, never one message each."""

    package: str  # name#version
    object: ObjectRef


class SchemaQuery(BaseModel):
    """Storage request/reply: fetch by id, or by canonical url (optionally `url|version`)."""

    id: str | None = None
    url: str | None = None
    type: str | None = None
    package: str | None = None
    limit: int = 100
    offset: int = 0


# --- jobs, events, dead letters ---------------------------------------------------------------


class JobStatus(BaseModel):
    id: str
    kind: JobKind
    state: JobState = JobState.QUEUED
    total: int = 0
    done: int = 0
    valid: int = 0
    invalid: int = 0
    failed: int = 0
    created: datetime = Field(default_factory=now)
    updated: datetime = Field(default_factory=now)
    finished: datetime | None = None
    error: str | None = None
    results: ObjectRef | None = None  # assembled NDJSON once finished
    detail: dict[str, Any] = Field(default_factory=dict)


class JobEvent(BaseModel):
    job_id: str
    state: JobState
    total: int
    done: int
    valid: int = 0
    invalid: int = 0
    failed: int = 0
    at: datetime = Field(default_factory=now)


class DeadLetter(BaseModel):
    """A message that exhausted its deliveries, kept with everything needed to replay it."""

    subject: str
    payload: str  # original body, base64
    headers: dict[str, str] = Field(default_factory=dict)
    error: str
    deliveries: int
    service: str
    failed_at: datetime = Field(default_factory=now)
    stream_seq: int | None = None


class Heartbeat(BaseModel):
    service: str
    instance: str
    version: str
    at: datetime = Field(default_factory=now)
    detail: dict[str, Any] = Field(default_factory=dict)


Outcome = Literal["valid", "invalid", "failed"]
