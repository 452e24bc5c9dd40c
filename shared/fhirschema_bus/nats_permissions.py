"""Per-service NATS users and their subject permissions, generated from subjects.py and the
topology (so they cannot drift from what the services publish), and the NATS configuration
that `make up` (devstack.py) and Kubernetes (scripts/k8s_secrets.py -> the NATS chart) load.

Each service publishes only its own application subjects (a validator cannot queue ingests or
write schemas), pulls only from its own durable consumers, and writes only its KV buckets. What
every service shares: creating/updating the streams and consumers of the topology (each one
ensures it at start-up), reading stream/consumer/KV state, ordered consumers (KV watches,
result reads), its heartbeat, dead letters, and replies to `_INBOX.>` (a sync request's reply
subject travels in the JetStream message, so `allow_responses` cannot cover it). Nobody may
delete or purge a stream or touch the account or server APIs: that is the `admin` user's.
"""

from __future__ import annotations

import json
from typing import Any

from fhirschema_bus import subjects as s
from fhirschema_bus.topology import DURABLES, KV_BUCKETS, STREAMS

SERVICES = ("gateway", "validator", "converter", "storage", "ig-ingest")
ADMIN = "admin"  # operators (the nats CLI), dead-letter tooling, the tests' own client

_STORAGE_REQUESTS = [s.STORAGE_GET_SCHEMA, s.STORAGE_LIST, s.STORAGE_DELETE, s.STORAGE_UPSERT,
                     s.STORAGE_INDEX_PACKAGE, s.STORAGE_REMOVE_PACKAGE]  # fmt: skip
_EVENTS = f"{s.JOB_EVENTS}.>"
# ig-ingest's core NATS requests (the gateway's /ig routes): schedule and retention.
_INGEST_REQUESTS = [s.INGEST_SCHEDULE_GET, s.INGEST_SCHEDULE_PUT, s.INGEST_RETENTION]

# Application subjects each service publishes (core NATS and JetStream).
PUBLISH: dict[str, list[str]] = {
    "gateway": [
        s.VALIDATE_ONE,
        s.VALIDATE_BATCH_ITEM,
        s.CONVERT_ONE,
        s.CONVERT_BATCH_ITEM,
        s.INGEST_PACKAGE,
        f"{s.VALIDATE_RESULT}.>",
        f"{s.CONVERT_RESULT}.>",
        _EVENTS,
        *_STORAGE_REQUESTS,
        s.INGEST_REGISTRY,
        s.STORAGE_PUT_SCHEMA,
        *_INGEST_REQUESTS,
    ],
    "validator": [f"{s.VALIDATE_RESULT}.>", _EVENTS, s.STORAGE_GET_SCHEMA, s.STORAGE_LIST],
    "converter": [f"{s.CONVERT_RESULT}.>", _EVENTS, s.STORAGE_PUT_SCHEMA],
    "storage": [_EVENTS],
    "ig-ingest": [
        s.INGEST_PACKAGE,
        s.STORAGE_PUT_SCHEMA,
        s.STORAGE_PUT_SCHEMAS,
        s.INGEST_FAILED,
        _EVENTS,
        *_STORAGE_REQUESTS,
    ],
}
# Core NATS subjects each service serves (request/reply, queue groups).
SERVE: dict[str, list[str]] = {
    "gateway": [],
    "validator": [],
    "converter": [],
    "storage": _STORAGE_REQUESTS,
    "ig-ingest": [s.INGEST_REGISTRY, *_INGEST_REQUESTS],
}
# Durable consumers each service pulls from.
PULLS: dict[str, list[str]] = {
    "gateway": [],
    "validator": [s.DURABLE_VALIDATOR_ONE, s.DURABLE_VALIDATOR_BATCH],
    "converter": [s.DURABLE_CONVERTER],
    "storage": [s.DURABLE_STORAGE, s.DURABLE_STORAGE_BATCH],
    "ig-ingest": [s.DURABLE_INGEST],
}
# Durable consumers a service declares itself (not in the topology): (stream, durable).
OWN_DURABLES: dict[str, list[tuple[str, str]]] = {
    "gateway": [],
    "validator": [],
    "converter": [],
    "storage": [(s.STREAM_EVENTS, s.DURABLE_STORAGE_RESULTS)],
    "ig-ingest": [],
}


def durables_of(service: str) -> list[str]:
    """The durable consumers a service pulls from (none for a name not listed here)."""
    return [*PULLS.get(service, []), *(durable for _, durable in OWN_DURABLES.get(service, []))]


# KV buckets each service writes (every service reads any).
WRITES_KV: dict[str, list[str]] = {
    "gateway": [s.KV_JOBS, s.KV_IDEMPOTENCY, s.KV_INGEST],
    "validator": [s.KV_JOBS, s.KV_IDEMPOTENCY],
    "converter": [s.KV_JOBS, s.KV_IDEMPOTENCY],
    "storage": [s.KV_JOBS, s.KV_IDEMPOTENCY, s.KV_REPOSITORY],
    "ig-ingest": [s.KV_JOBS, s.KV_IDEMPOTENCY, s.KV_INGEST],
}
# Streams whose messages a service reads through ephemeral / ordered consumers.
READS_STREAMS: dict[str, list[str]] = {
    "gateway": [s.STREAM_RESULTS, s.STREAM_EVENTS, s.STREAM_DEAD_LETTERS],
    "validator": [],
    "converter": [],
    "storage": [s.STREAM_RESULTS],
    "ig-ingest": [s.STREAM_EVENTS],
}


def _streams() -> list[str]:
    return [str(c.name) for c in STREAMS] + [f"KV_{kv.bucket}" for kv in KV_BUCKETS]


def _durable_stream(durable: str) -> str:
    subject = next(d.subject for d in DURABLES if d.name == durable).replace(">", "x")
    for stream in STREAMS:
        for pattern in stream.subjects or []:
            head = pattern.removesuffix(">")
            if subject == pattern or (pattern.endswith(">") and subject.startswith(head)):
                return str(stream.name)
    raise KeyError(durable)


def permissions(service: str) -> dict[str, Any]:
    """The `permissions` block of the service's NATS user."""
    api = "$JS.API"
    streams = _streams()
    kv_streams = [f"KV_{kv.bucket}" for kv in KV_BUCKETS]
    ordered = [*kv_streams, *READS_STREAMS[service]]
    publish = [
        f"{api}.INFO", f"{api}.STREAM.NAMES", f"{api}.STREAM.LIST", f"{api}.STREAM.INFO.*",
        *(f"{api}.STREAM.{op}.{st}" for st in streams for op in ("CREATE", "UPDATE")),
        # The topology's durables (every service ensures them), and ephemeral consumers to read.
        *(f"{api}.CONSUMER.DURABLE.CREATE.{_durable_stream(d.name)}.{d.name}" for d in DURABLES),
        *(f"{api}.CONSUMER.CREATE.{_durable_stream(d.name)}.{d.name}.>" for d in DURABLES),
        *(f"{api}.CONSUMER.CREATE.{st}" for st in ordered),
        *(f"{api}.CONSUMER.CREATE.{st}.>" for st in ordered),
        *(f"{api}.CONSUMER.DELETE.{st}.*" for st in ordered),
        *(f"{api}.CONSUMER.MSG.NEXT.{st}.*" for st in READS_STREAMS[service]),
        f"{api}.CONSUMER.INFO.*.*", f"{api}.CONSUMER.NAMES.*", f"{api}.CONSUMER.LIST.*",
        *(f"{api}.CONSUMER.MSG.NEXT.{_durable_stream(d)}.{d}" for d in PULLS[service]),
        *(f"$JS.ACK.{_durable_stream(d)}.{d}.>" for d in PULLS[service]),
        *(f"{api}.CONSUMER.{op}.{st}.{d}" for st, d in OWN_DURABLES[service]
          for op in ("DURABLE.CREATE", "MSG.NEXT", "INFO")),
        *(f"{api}.CONSUMER.CREATE.{st}.{d}.>" for st, d in OWN_DURABLES[service]),
        *(f"$JS.ACK.{st}.{d}.>" for st, d in OWN_DURABLES[service]),
        *(f"$JS.ACK.{st}.>" for st in ordered),
        "$JS.FC.>",  # flow control of ordered consumers
        *(f"{api}.DIRECT.GET.{st}" for st in kv_streams), *(f"{api}.DIRECT.GET.{st}.>" for st in kv_streams),
        *(f"{api}.STREAM.MSG.GET.{st}" for st in [*kv_streams, *READS_STREAMS[service]]),
        *(f"$KV.{b}.>" for b in [*WRITES_KV[service], s.KV_SERVICES]),
        f"{s.SERVICE_HEARTBEAT}.{service}", f"{s.DEAD_LETTER}.>",
        *PUBLISH[service],
        "_INBOX.>",  # replies to requests (storage, registry search, sync validate / convert)
    ]  # fmt: skip
    if service == "gateway":  # dead-letter replay removes a replayed letter
        publish.append(f"{api}.STREAM.MSG.DELETE.{s.STREAM_DEAD_LETTERS}")
    subscribe = ["_INBOX.>", *SERVE[service]]
    return {"publish": {"allow": _unique(publish)}, "subscribe": {"allow": _unique(subscribe)}}


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def users(passwords: dict[str, str]) -> list[dict[str, Any]]:
    """NATS `authorization.users` entries: each service with its permissions, `admin` with all."""
    entries = [{"user": svc, "password": passwords[svc], "permissions": permissions(svc)} for svc in SERVICES]
    entries.append({"user": ADMIN, "password": passwords[ADMIN]})
    return entries


def config(passwords: dict[str, str]) -> str:
    """A NATS server configuration fragment (JSON is valid NATS config syntax): include it, or
    pass it alone with `-c` next to the JetStream flags."""
    return json.dumps({"authorization": {"users": users(passwords)}}, indent=2) + "\n"
