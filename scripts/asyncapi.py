"""Generate docs/asyncapi.json: every subject the workers consume, from their FastStream brokers.

    .venv/bin/python scripts/asyncapi.py            # writes docs/asyncapi.json
    .venv/bin/python scripts/asyncapi.py --check    # fails when the committed file is stale

Programs that publish straight to NATS (without the gateway) read this document; the message
payloads are the pydantic contracts in shared/fhirschema_bus/contracts.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from faststream.specification.asyncapi import AsyncAPI
from generated import write_or_check

import fhirschema
from fhirschema_bus import contracts, subjects

OUT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"


def build() -> dict:
    # Building the brokers connects to nothing; S3 settings only need to parse.
    os.environ.setdefault("FHIRSCHEMA_S3_ACCESS_KEY", "unused")
    os.environ.setdefault("FHIRSCHEMA_S3_SECRET_KEY", "unused")
    from importlib import import_module

    factories = [
        "validator_service.bootstrap",
        "converter_service.bootstrap",
        "ig_ingest.app",
        "storage_service.app",
    ]
    brokers = [import_module(name).bootstrap().broker for name in factories]
    spec = AsyncAPI(
        *brokers,
        title="FHIRSchema service bus",
        version=fhirschema.__version__,
        description=(
            "JetStream subjects consumed by the validator, converter, ig-ingest and storage services. "
            f"Publish requests with a `Nats-Msg-Id` header. Results: `{subjects.VALIDATE_RESULT}.<job>`, "
            f"`{subjects.CONVERT_RESULT}.<job>` (a ValidateResult or ConvertResult per message; a batch "
            f"chunk's results come as one ValidateResultChunk); job status: KV `{subjects.KV_JOBS}` and "
            f"`{subjects.JOB_EVENTS}.<job>`; dead letters: `{subjects.DEAD_LETTER}.<subject>`. "
            f"Storage replies (`{subjects.PREFIX}.storage.*`) are StorageReply envelopes; the repository "
            f"state is KV `{subjects.KV_REPOSITORY}` key `{subjects.REPOSITORY_STATE_KEY}` (RepositoryState). "
            f"Resources over {contracts.INLINE_LIMIT} bytes travel by S3 reference (`resource_ref`). "
            f"IG ingest (as POST /ig/process): an IngestRequest on `{subjects.INGEST_PACKAGE}`; its "
            f"progress and outcome in KV `{subjects.KV_INGEST}` key `job.<job_id>` (IngestJob, as "
            f"GET /ig/status/<job>), what is ingested under `pkg.<name>.<version>` (IngestedPackage); "
            f"`{subjects.INGEST_REGISTRY}` (RegistryQuery, request/reply) answers a RegistryAnswer."
        ),
    )
    schema = spec.to_specification().to_jsonable()
    # Outgoing messages the services publish, for subscribers (not FastStream subscribers here).
    schema.setdefault("components", {}).setdefault("schemas", {}).update(
        {
            model.__name__: model.model_json_schema(by_alias=True)
            for model in (
                contracts.ValidateResult,
                contracts.ValidateResultChunk,
                contracts.ConvertResult,
                contracts.JobStatus,
                contracts.JobEvent,
                contracts.DeadLetter,
                # storage's replies (each inside a StorageReply envelope) and the repository state
                contracts.StorageReply,
                contracts.SchemaDocument,
                contracts.SchemaList,
                contracts.SchemaRecord,
                contracts.SchemaDeleted,
                contracts.PackageIndexed,
                contracts.PackageRemoved,
                contracts.RepositoryState,
                # ig-ingest: job status and ingested packages (KV), the registry search's reply
                contracts.IngestJob,
                contracts.IngestedPackage,
                contracts.RegistryAnswer,
            )
        }
    )
    return schema


def main() -> int:
    return write_or_check(OUT, lambda: json.dumps(build(), indent=2, sort_keys=True) + "\n", __doc__)


if __name__ == "__main__":
    sys.exit(main())
