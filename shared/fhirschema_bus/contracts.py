"""Message contracts: pydantic models defined once, imported by publishers and consumers.

Messages stay well under NATS' 1 MB default. A resource larger than `INLINE_LIMIT` bytes travels
by reference: the publisher stores it in S3 and sends `resource_ref` (bucket/key) instead.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhirschema.ids import PackageId
from fhirschema.validator.issues import Issue

INLINE_LIMIT = 512 * 1024  # bytes of JSON; bigger payloads go by S3 reference
CHUNK_BYTES = 768 * 1024  # a ValidateChunk message stays under this (NATS' limit: 1 MB)
HEADER_MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication (effect-once on publish)
# FastStream's correlation id; publishers set it (to the message id) so that consumers need not
# mint a uuid4 per message (a getrandom syscall each, expensive in sandboxed kernels).
HEADER_CORRELATION_ID = "correlation_id"
# The ids a message's handler logs with (tracing.outgoing / incoming_ids): the gateway request
# that caused it and its job.
HEADER_REQUEST_ID = "Fhirschema-Request-Id"
HEADER_JOB_ID = "Fhirschema-Job-Id"


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


class InputIssue(BaseModel):
    """A finding about the JSON text of a resource (`fhirschema.jsoninput`: a repeated key), made
    where the text was parsed (the gateway), so the message carries the parsed value. The
    validator puts these before the engine's issues, as the CLI does for the same bytes."""

    code: str
    severity: str
    path: list[str | int] = Field(default_factory=list)
    message: str
    line: int | None = None
    column: int | None = None

    @classmethod
    def of(cls, issue: Issue) -> InputIssue:
        return cls(
            code=issue.code, severity=issue.severity, path=issue.path, message=issue.message,
            line=issue.line, column=issue.column,
        )  # fmt: skip

    def issue(self) -> Issue:
        return Issue(
            self.code, self.severity, list(self.path), self.message, line=self.line, column=self.column
        )


class ValidateRequest(BaseModel):
    """One resource to validate. `index` is its position in the job (0 for single requests)."""

    job_id: str
    index: int = 0
    resource: dict[str, Any] | None = None
    resource_ref: ObjectRef | None = None
    profiles: list[str] = Field(default_factory=list)
    # The package context, as `fhirschema validate --package` (those packages and their
    # dependencies); empty: every registered package of the validator's FHIR version.
    packages: list[str] = Field(default_factory=list)
    options: ValidateOptions = Field(default_factory=ValidateOptions)
    source: str | None = None  # where the item came from (file:line) — echoed in the result
    reply_to: str | None = None  # core NATS subject awaiting the result (synchronous POST /validate)
    input_issues: list[InputIssue] = Field(default_factory=list)  # of `resource`'s JSON text

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
    input_issues: list[InputIssue] = Field(default_factory=list)  # of `resource`'s JSON text


class ValidateChunk(BaseModel):
    """Several items of one batch job in one message, on the batch subject (VALIDATE_BATCH_ITEM).

    The gateway packs a batch's inline resources into chunks (under `CHUNK_BYTES`): one fetch,
    one ack and one job-count write per chunk instead of per resource. Its results are published
    as ValidateResultChunk messages (one per chunk unless too large), each item counted once."""

    job_id: str
    items: list[ChunkItem]
    profiles: list[str] = Field(default_factory=list)
    packages: list[str] = Field(default_factory=list)  # as ValidateRequest.packages
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
    """Ingest packages (`name`, `name#1.2.3`, `name#1.2.x`, `name#current`) and, unless
    `dependencies` is false, their dependency closure, into the repository (POST /ig/process,
    the schedule, `make up`). Progress and the outcome: the IngestJob in KV_INGEST."""

    job_id: str
    packages: list[str] = Field(min_length=1)
    dependencies: bool = True
    registry: str | None = None  # only this configured registry (base URL) is asked
    sources: list[str] = Field(default_factory=list)  # override FHIRSCHEMA_PACKAGE_SOURCES (tests, ops)


class IngestProcess(BaseModel):
    """POST /ig/process (the HTTP contract): `packages` as `name`, `name#1.2.3`, `name#1.2.x` or
    `name#current`; `registry`, when given, must be a configured registry's base URL (checked by
    the gateway: 400 otherwise; ig-ingest contacts configured registries only, whatever it gets)."""

    packages: list[str] = Field(min_length=1, max_length=1000)
    dependencies: bool = True
    registry: str | None = None

    @field_validator("packages")
    @classmethod
    def _specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            name, version = PackageId.split(spec)
            PackageId(name, version or "latest")  # ValueError naming the bad name or version
        return [spec.strip() for spec in specs]


class IngestAccepted(BaseModel):
    """The 202 of POST /ig/process: the job id and where its status is (also `Location`)."""

    job: str
    status: str


class PackageState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # stored (or already stored with the same SHA-256)
    FAILED = "failed"


class IngestPackageStatus(BaseModel):
    """One package of an ingest job's closure (GET /ig/status/{job} `packages[]`)."""

    name: str
    version: str | None = None  # the resolved version (None while it is not resolved)
    requested: str  # the spec as asked, e.g. `hl7.fhir.us.core#6.1.x`
    state: PackageState = PackageState.QUEUED
    total: int = 0  # its StructureDefinitions (known once downloaded): `schemas` of `total` so far
    schemas: int = 0
    sha256: str | None = None
    source: str | None = None  # the registry (base URL or folder) that served it
    error: str | None = None
    missing_dependencies: list[str] = Field(default_factory=list)  # name#version in no registry
    skipped: bool = False  # the same name, version and SHA-256 were stored already
    dependency_of: str | None = None  # name#version of the package that needs it (None: asked for)


class IngestJob(BaseModel):
    """An ingest job as GET /ig/status/{job} shows it: every package of the closure."""

    job: str
    state: JobState = JobState.QUEUED
    packages: list[IngestPackageStatus] = Field(default_factory=list)
    requested: list[str] = Field(default_factory=list)
    created: datetime = Field(default_factory=now)
    finished: datetime | None = None
    error: str | None = None


class IngestedPackage(BaseModel):
    """A package in the repository, as ig-ingest stored it (GET /ig/status `packages[]`)."""

    name: str
    version: str
    ingested_at: datetime = Field(default_factory=now)
    schemas: int = 0
    sha256: str
    source: str | None = None
    job: str | None = None


class IngestOverview(BaseModel):
    """GET /ig/status: what is ingested and the recent ingest jobs."""

    packages: list[IngestedPackage]
    jobs: list[IngestJob]


class RegistryQuery(BaseModel):
    """Request/reply INGEST_REGISTRY (GET /ig/registry): search the configured registries."""

    name: str | None = None
    canonical: str | None = None
    fhirversion: str | None = None


class RegistryPackage(BaseModel):
    """One package as the configured registries list it, merged across them."""

    name: str
    description: str | None = None
    fhirVersion: str | None = None  # the HTTP contract's casing
    latest: str | None = None
    versions: list[str] = Field(default_factory=list)
    registry: str  # the first registry that lists it


class RegistryAnswer(BaseModel):
    """Reply to INGEST_REGISTRY: the packages, or why the registries could not be asked."""

    packages: list[RegistryPackage] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class IngestSchedule(BaseModel):
    """PUT /ig/schedule (and INGEST_SCHEDULE_PUT): what the scheduled run keeps current (stored
    in KV_INGEST). `cron`: five fields (minute hour day month weekday), or six with seconds last
    (croniter's convention); evaluated in `timezone` (an IANA name). A bad value is a
    ValidationError saying why (the gateway's 400)."""

    cron: str = "17 3 * * *"
    timezone: str = "UTC"
    packages: list[str] = Field(default_factory=list)
    masks: list[str] = Field(default_factory=list)  # e.g. `hl7.fhir.us.*`, through the catalog
    enabled: bool = True
    dependencies: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from croniter import croniter  # imported here: only schedule users pay for it

        v = " ".join(v.split())
        if len(v.split(" ")) not in (5, 6):
            raise ValueError(f"cron {v!r} has {len(v.split())} fields: give 5 (minute hour day month weekday) or 6 (then seconds)")  # fmt: skip
        if not croniter.is_valid(v):
            raise ValueError(f"cron {v!r} is not a valid cron expression")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"timezone {v!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)") from e
        return v

    @field_validator("masks")
    @classmethod
    def _masks(cls, v: list[str]) -> list[str]:
        for mask in v:
            if not mask.strip() or not re.fullmatch(r"[A-Za-z0-9._\-*?]+", mask):
                raise ValueError(f"mask {mask!r}: a package id with * or ? wildcards, e.g. hl7.fhir.us.*")
        return v


class ScheduleRuns(BaseModel):
    """What the scheduler last did (KV_INGEST), written by the replica holding the lease."""

    last_run: datetime | None = None  # the cron tick last run (not the wall-clock start)
    last_job: str | None = None
    last_success: datetime | None = None
    # The claimed tick's request, and whether it was published (a leader that died between the
    # claim and the publish leaves False: the next leader publishes it, same message id).
    request: IngestRequest | None = None
    published: bool = True


class ScheduleView(IngestSchedule):
    """GET /ig/schedule: the stored schedule, its next tick and what ran last."""

    next_run: datetime | None = None
    last_run: datetime | None = None
    last_job: str | None = None


class ScheduleGet(BaseModel):
    """Request/reply INGEST_SCHEDULE_GET (GET /ig/schedule): no fields."""


class ScheduleReply(BaseModel):
    """Reply to INGEST_SCHEDULE_GET / INGEST_SCHEDULE_PUT: the schedule (None: none stored yet)
    or why the request was refused (`status` 400: a bad schedule; 503: KV unavailable)."""

    schedule: ScheduleView | None = None
    error: str | None = None
    status: int = 200


class RetentionRequest(BaseModel):
    """Request/reply INGEST_RETENTION: remove all but the newest `keep` versions of every package
    (default FHIRSCHEMA_IG_KEEP_VERSIONS; 0 keeps all); pinned versions and what kept packages
    depend on stay. `dry_run`: only list what would go."""

    keep: int | None = None
    dry_run: bool = False


class RetentionReport(BaseModel):
    """Reply to INGEST_RETENTION: `removed` (or, dry, would be), their schema records dropped."""

    keep: int
    dry_run: bool
    kept: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    schemas: int = 0
    errors: list[str] = Field(default_factory=list)


class IngestFailure(BaseModel):
    """Published on INGEST_FAILED (and POSTed to the webhook) when packages of a job failed."""

    job: str
    failed: list[IngestPackageStatus]
    scheduled: bool = False
    at: datetime = Field(default_factory=now)


SchemaOrigin = Literal["upload", "package"]


class SchemaRecord(BaseModel):
    """The repository's index entry for one stored FHIRSchema."""

    id: str  # derived from (url, version, package): see storage_service.keys.schema_id
    url: str
    version: str | None = None
    type: str | None = None
    kind: str | None = None
    derivation: str | None = None
    package: str | None = None  # name#version
    # "package": converted from a registered package tarball (ig-ingest); validators read those
    # from the tarball itself. "upload": everything else (POST/PUT /schemas, stored conversions).
    origin: SchemaOrigin = "upload"
    object: ObjectRef
    updated: datetime = Field(default_factory=now)


class PutSchema(BaseModel):
    """Store a FHIRSchema. Storage request/reply (STORAGE_UPSERT, the gateway: a url|version that
    exists is a conflict unless `replace`) or durable (STORAGE_PUT_SCHEMA, ig-ingest and the
    converter: always replaces, a redelivery must succeed)."""

    schema_: dict[str, Any] = Field(alias="schema")
    package: str | None = None
    id: str | None = None  # replace exactly this record (PUT /schemas/{id}); it must exist
    replace: bool = False
    origin: SchemaOrigin = "upload"

    model_config = ConfigDict(populate_by_name=True)


class PutSchemas(BaseModel):
    """Store a chunk of FHIRSchemas in one durable message (STORAGE_PUT_SCHEMAS, ig-ingest): each
    put replaces what its identity holds, as STORAGE_PUT_SCHEMA does, so a redelivery succeeds
    and leaves the same records. The publisher sets a Nats-Msg-Id derived from the chunk (job,
    package, SHA-256, position): a chunk published twice is stored by the stream once. One
    message per schema was one storage round of Redis and S3 calls each (717 for R4 core +
    US Core: 58 s); a chunk is stored with its S3 writes concurrent and one Redis round trip."""

    puts: list[PutSchema] = Field(min_length=1)


class IndexPackage(BaseModel):
    """Storage request/reply: register a package tarball already stored in S3 (ig-ingest stored it)
    in the repository state, so that validator replicas load it. Resources travel inside the
    tarball, never one message each. `sha256`, when given, must match the stored object."""

    package: str  # name#version
    object: ObjectRef
    sha256: str | None = None
    source: str | None = None  # where ig-ingest found it (registry url, folder)


class RemovePackage(BaseModel):
    """Storage request/reply: take a package out of the repository state and drop its schema
    records (its tarball stays in S3 for whoever stored it to delete)."""

    package: str  # name#version


class SchemaQuery(BaseModel):
    """Storage request/reply: fetch by id, or by canonical url (optionally `url|version`)."""

    id: str | None = None
    url: str | None = None
    type: str | None = None
    package: str | None = None
    origin: SchemaOrigin | None = None
    limit: int = 100
    offset: int = 0


# --- the repository state (KV_REPOSITORY / REPOSITORY_STATE_KEY) -------------------------------


class StoredPackage(BaseModel):
    """A package tarball registered in the repository: validators materialise it."""

    package: str  # name#version
    object: ObjectRef  # the tarball in S3
    sha256: str  # of the tarball's bytes; replicas check what they download
    fhir_versions: list[str] = Field(default_factory=list)  # from package.json
    dependencies: dict[str, str] = Field(default_factory=dict)  # name -> version, from package.json
    source: str | None = None
    registered: datetime = Field(default_factory=now)


class RepositoryState(BaseModel):
    """What the schema repository holds, as ONE record: written only by storage, compare-and-set
    on the KV revision; every change (package registered or removed, schema uploaded, replaced or
    deleted) bumps `revision`. Validator replicas watch it; it is the only thing that makes their
    package contexts and compiled validators change."""

    revision: int = 0
    packages: list[StoredPackage] = Field(default_factory=list)
    uploads: int = 0  # bumps with every change of an uploaded schema (origin "upload")
    updated: datetime = Field(default_factory=now)

    def package(self, spec: str) -> StoredPackage | None:
        return next((p for p in self.packages if p.package == spec), None)


# --- storage replies --------------------------------------------------------------------------


class StorageFault(BaseModel):
    """Why storage could not answer: an HTTP-like status (400 bad request, 404 not found,
    409 conflict, 503 S3 unavailable or the index rebuilding) and a message for the user."""

    status: int
    message: str


class StorageReply(BaseModel):
    """The envelope of every storage reply: a `result` (the model the request names) or an
    `error`. Encoded by storage_service, decoded by `fhirschema_bus.storage.StorageClient`."""

    result: dict[str, Any] | None = None
    error: StorageFault | None = None


class SchemaDocument(BaseModel):
    """Reply to STORAGE_GET_SCHEMA: the record and the FHIRSchema itself."""

    record: SchemaRecord
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True)


class SchemaList(BaseModel):
    """Reply to STORAGE_LIST: one page of records, and how many match in all."""

    items: list[SchemaRecord]
    total: int


class SchemaDeleted(BaseModel):
    """Reply to STORAGE_DELETE."""

    id: str
    deleted: bool


class PackageIndexed(BaseModel):
    """Reply to STORAGE_INDEX_PACKAGE: the package as registered, and the state revision that
    holds it."""

    package: StoredPackage
    resources: int  # canonical resources (with a url) in the tarball
    revision: int


class PackageRemoved(BaseModel):
    """Reply to STORAGE_REMOVE_PACKAGE."""

    package: str
    removed: bool  # False: it was not registered
    schemas: int  # schema records dropped
    revision: int


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
