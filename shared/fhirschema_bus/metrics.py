"""Every Prometheus metric the workers export, defined once (the gateway's are in gateway.metrics).

They live in prometheus_client's default registry, which a worker's `/metrics` serves
(probes.py); the Grafana dashboard and the alert rules (deploy/) name only these and the
gateway's, which `tests/services/test_observability_rules.py` checks.

Labels are bounded: a service name, a durable consumer, a result, a cache layer — never a job id,
a subject with a job id in it, a resource id or a profile url from a caller. Several workers in
one process (tests) share these objects, told apart by the `service` label.
"""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

# Engine time per resource: the compiled validator takes ~0.1-1 ms, Bundles and cold plans longer.
ENGINE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
MESSAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
INGEST_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# --- messages, by the shared worker's acknowledgement policy (worker.py) -------------------------
MESSAGES_PROCESSED = Counter(
    "fhirschema_messages_processed", "JetStream messages handled and acked", ["service", "durable"]
)
MESSAGES_FAILED = Counter(
    "fhirschema_messages_failed", "Handler failures (nak'ed, retried with backoff)", ["service", "durable"]
)
MESSAGES_DEAD_LETTERED = Counter(
    "fhirschema_messages_dead_lettered", "Messages sent to the dead-letter stream", ["service", "durable"]
)
MESSAGE_SECONDS = Histogram(
    "fhirschema_message_seconds", "Handling time per acked message", ["service", "durable"],
    buckets=MESSAGE_BUCKETS,
)  # fmt: skip

# --- JetStream state, polled from the server (jetstream_stats.py) ------------------------------------
CONSUMER_PENDING = Gauge(
    "fhirschema_consumer_pending", "Messages not yet delivered to the durable consumer", ["durable"]
)
CONSUMER_ACK_PENDING = Gauge(
    "fhirschema_consumer_ack_pending", "Messages delivered but not yet acknowledged", ["durable"]
)
CONSUMER_REDELIVERED = Gauge(
    "fhirschema_consumer_redelivered", "Messages delivered more than once, not yet acked", ["durable"]
)
DEAD_LETTERS = Gauge("fhirschema_dead_letters", "Messages held in the dead-letter stream (FHIRSCHEMA_DLQ)")

# --- validations (validator service) -----------------------------------------------------------------
VALIDATIONS = Counter(
    "fhirschema_validations", "Resources validated, by result (valid, invalid, failed)", ["result"]
)
ENGINE_SECONDS = Histogram(
    "fhirschema_validation_engine_seconds", "Engine time per validated resource", buckets=ENGINE_BUCKETS
)
CACHE = Counter(
    "fhirschema_cache_requests",
    "Cache lookups by layer (validator: package contexts, compiled validators) and hit/miss",
    ["layer", "result"],
)

# --- IG ingest (ig-ingest service) ---------------------------------------------------------------------
INGEST_RUNS = Counter("fhirschema_ingest_runs", "Package ingests finished, by result", ["result"])
INGEST_SECONDS = Histogram(
    "fhirschema_ingest_seconds", "Time to ingest one package (fetch, convert, publish)",
    buckets=INGEST_BUCKETS,
)  # fmt: skip
INGEST_SCHEMAS = Counter("fhirschema_ingest_schemas", "FHIRSchemas published by ingests")
INGEST_LAST_SUCCESS = Gauge(
    "fhirschema_ingest_last_success_timestamp_seconds", "Unix time of the last successful ingest"
)

INGEST_BYTES = Counter("fhirschema_ingest_bytes", "Package tarball bytes downloaded by ingests")
INGEST_JOB_SECONDS = Histogram(
    "fhirschema_ingest_job_seconds", "Time of a whole ingest job (its closure), scheduled or not",
    ["scheduled"], buckets=INGEST_BUCKETS,
)  # fmt: skip
INGEST_SCHEDULED_RUNS = Counter(
    "fhirschema_ingest_scheduled_runs", "Scheduled runs finished, by result", ["result"]
)
INGEST_SCHEDULE_LAST_SUCCESS = Gauge(
    "fhirschema_ingest_schedule_last_success_timestamp_seconds",
    "Unix time of the last scheduled run that succeeded",
)
INGEST_NOTICES = Counter(
    "fhirschema_ingest_failure_notices",
    "Failure notices by channel (bus, webhook) and result",
    ["channel", "result"],
)
INGEST_RETENTION_REMOVED = Counter(
    "fhirschema_ingest_retention_removed", "Package versions removed by retention"
)

# Results as they are written in labels: a closed set.
RESULTS = ("valid", "invalid", "failed")
INGEST_RESULTS = ("succeeded", "failed")


BUILD_INFO = Info("fhirschema_build", "What runs: service, version, engine build, Python", ["service"])


def set_build_info(service: str, version: str, engine: str = "", info: Info = BUILD_INFO) -> None:
    """`fhirschema_build_info{service,version,engine,python} 1` (engine: compiled | python | "")."""
    info.labels(service).info({"version": version, "engine": engine, "python": platform.python_version()})


class CountedTimer:
    """A counter and a histogram of the same labels, fed together, their children kept per label
    values: labels() costs more than the inc and observe it serves (a lock, a check of the
    values), and ran twice per message or request. Bounded as the label sets are (durables,
    route templates)."""

    def __init__(self, counter: Counter, histogram: Histogram) -> None:
        self.counter = counter
        self.histogram = histogram
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        if (children := self._children.get(labels)) is None:
            children = self._children[labels] = (self.counter.labels(*labels), self.histogram.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)


MESSAGES = CountedTimer(MESSAGES_PROCESSED, MESSAGE_SECONDS)


def failure_series(service: str, durables: list[str]) -> None:
    """The failure counters of each durable a service pulls from, at 0 from its start: a series
    that appears with its first failure hides that failure from rate()/increase(), and the
    dashboard's failure panels showed "no data" on a healthy stack."""
    for durable in durables:
        MESSAGES_FAILED.labels(service, durable)
        MESSAGES_DEAD_LETTERED.labels(service, durable)


# Every result's series exists from the start (a rate over a series that appears later is wrong).
# The children kept: counted per message, and labels() costs more than the inc it serves.
VALIDATIONS_BY_RESULT = {_result: VALIDATIONS.labels(_result) for _result in RESULTS}
for _result in INGEST_RESULTS:
    INGEST_RUNS.labels(_result)
    INGEST_SCHEDULED_RUNS.labels(_result)
