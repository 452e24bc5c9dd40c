"""`python -m storage_service [--config FILE] [flags]`: run the worker built by bootstrap()."""

from __future__ import annotations

from fhirschema_bus import optional_imports

if __name__ == "__main__":  # this process is the service: before any library is imported
    optional_imports.service_process(worker=True)

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import run_worker
from fhirschema_bus.settings import LogSettings, NatsSettings, RedisSettings, S3Settings, StorageSettings
from fhirschema_bus.worker import WorkerSettings
from storage_service.app import bootstrap

CONFIG = ServiceConfig(
    "storage_service", LogSettings, NatsSettings, WorkerSettings, S3Settings, RedisSettings, StorageSettings
)


def main() -> None:
    run_worker(CONFIG, lambda c: bootstrap(
        nats=c.get(NatsSettings), s3=c.get(S3Settings), redis=c.get(RedisSettings),
        worker_settings=c.get(WorkerSettings), settings=c.get(StorageSettings),
    ).worker)  # fmt: skip


if __name__ == "__main__":
    main()
