"""`python -m ig_ingest [--config FILE] [flags]`: run the worker built by bootstrap()."""

from __future__ import annotations

from fhirschema_bus import optional_imports

if __name__ == "__main__":  # this process is the service: before any library is imported
    optional_imports.service_process(worker=True)

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import run_worker
from fhirschema_bus.settings import IngestSettings, LogSettings, NatsSettings, PackageSettings, S3Settings
from fhirschema_bus.worker import WorkerSettings
from ig_ingest.app import bootstrap

CONFIG = ServiceConfig(
    "ig_ingest", LogSettings, NatsSettings, WorkerSettings, PackageSettings, IngestSettings, S3Settings
)


def main() -> None:
    run_worker(CONFIG, lambda c: bootstrap(
        nats=c.get(NatsSettings), s3=c.get(S3Settings), packages=c.get(PackageSettings), ingest=c.get(IngestSettings),
        worker_settings=c.get(WorkerSettings),
    ))  # fmt: skip


if __name__ == "__main__":
    main()
