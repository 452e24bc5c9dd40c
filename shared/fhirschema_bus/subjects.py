"""Every JetStream stream, subject, durable consumer and KV bucket name, in one place.

Programs that publish straight to NATS use these names (see docs/asyncapi.json).
"""

from __future__ import annotations

PREFIX = "fhirschema"

# --- work streams (WorkQueue retention: each message is consumed once by one replica) ---
STREAM_REQUESTS = "FHIRSCHEMA_REQUESTS"
VALIDATE_ONE = f"{PREFIX}.validate.one"  # one resource, a reply is awaited by the gateway
VALIDATE_BATCH_ITEM = f"{PREFIX}.validate.batch"  # one resource of a batch job (fan-out)
CONVERT_ONE = f"{PREFIX}.convert.one"
CONVERT_BATCH_ITEM = f"{PREFIX}.convert.batch"
INGEST_PACKAGE = f"{PREFIX}.ingest.package"
STORAGE_PUT_SCHEMA = f"{PREFIX}.storage.put"
STORAGE_PUT_SCHEMAS = f"{PREFIX}.storage.puts"  # PutSchemas: a chunk of schemas in one message (ig-ingest)
REQUEST_SUBJECTS = [
    VALIDATE_ONE,
    VALIDATE_BATCH_ITEM,
    CONVERT_ONE,
    CONVERT_BATCH_ITEM,
    INGEST_PACKAGE,
    STORAGE_PUT_SCHEMA,
    STORAGE_PUT_SCHEMAS,
]

# --- results (Limits retention, read back by the gateway / result assemblers) ---
STREAM_RESULTS = "FHIRSCHEMA_RESULTS"
VALIDATE_RESULT = f"{PREFIX}.result.validate"  # + ".<job_id>"
CONVERT_RESULT = f"{PREFIX}.result.convert"  # + ".<job_id>"

# --- job status events (Limits retention, followed by WebSocket clients and dashboards) ---
STREAM_EVENTS = "FHIRSCHEMA_EVENTS"
JOB_EVENTS = f"{PREFIX}.events.job"  # + ".<job_id>"

# --- ingest: failures of ingest jobs (IngestFailure), in STREAM_EVENTS ---
INGEST_FAILED = f"{PREFIX}.events.ingest.failed"

# --- dead letters ---
STREAM_DEAD_LETTERS = "FHIRSCHEMA_DLQ"
DEAD_LETTER = f"{PREFIX}.dlq"  # + ".<original subject>"

# --- core NATS request/reply (not persisted): the storage service ---
STORAGE_GET_SCHEMA = f"{PREFIX}.storage.get"
STORAGE_LIST = f"{PREFIX}.storage.list"
STORAGE_DELETE = f"{PREFIX}.storage.delete"
STORAGE_UPSERT = f"{PREFIX}.storage.upsert"  # synchronous put (gateway uploads), replies a SchemaRecord
STORAGE_INDEX_PACKAGE = f"{PREFIX}.storage.index"  # IndexPackage -> PackageIndexed: register a stored tarball
STORAGE_REMOVE_PACKAGE = f"{PREFIX}.storage.unindex"  # RemovePackage -> PackageRemoved
# Every storage reply is a StorageReply envelope (contracts.py), read with fhirschema_bus.storage.
# The IG schedule (ig-ingest, core NATS, any replica answers): ScheduleGet / IngestSchedule -> ScheduleReply.
INGEST_SCHEDULE_GET = f"{PREFIX}.schedule.get"
INGEST_SCHEDULE_PUT = f"{PREFIX}.schedule.put"
INGEST_RETENTION = f"{PREFIX}.retention.run"  # RetentionRequest -> RetentionReport (ig-ingest, core NATS)
INGEST_REGISTRY = f"{PREFIX}.registry.search"  # not under .ingest.> (a stream): RegistryQuery -> RegistryAnswer (ig-ingest, core NATS)
SERVICE_HEARTBEAT = f"{PREFIX}.heartbeat"  # + ".<service>"

# --- durable consumers (shared by all replicas of a service) ---
DURABLE_VALIDATOR_ONE = "validator-one"
DURABLE_VALIDATOR_BATCH = "validator-batch"
DURABLE_CONVERTER = "converter"
DURABLE_INGEST = "ig-ingest"
DURABLE_STORAGE = "storage"
DURABLE_STORAGE_BATCH = "storage-batch"  # STORAGE_PUT_SCHEMAS
DURABLE_STORAGE_RESULTS = "storage-results"  # on STREAM_EVENTS: finished jobs' results assembled

# --- KV buckets ---
KV_JOBS = "fhirschema_jobs"  # job id -> JobStatus JSON
KV_IDEMPOTENCY = "fhirschema_done"  # "<job>.<index>" -> marker: counted once
KV_SERVICES = "fhirschema_services"  # service instance -> last heartbeat
# The repository state (contracts.RepositoryState): ONE key, written only by storage
# (compare-and-set on the KV revision), watched by every validator replica.
KV_REPOSITORY = "fhirschema_repository"
# ig-ingest: `job.<id>` IngestJob, `pkg.<name>.<version>` IngestedPackage, `schedule`
# IngestSchedule, `schedule-runs` ScheduleRuns (the last tick run, claimed compare-and-set: a
# tick never runs twice), `lease` the scheduler's leader lease (ig_ingest/lease.py).
KV_INGEST = "fhirschema_ingest"
REPOSITORY_STATE_KEY = "state"


def job_result_subject(base: str, job_id: str) -> str:
    return f"{base}.{job_id}"
