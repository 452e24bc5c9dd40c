"""`python -m validator_service [--config FILE] [flags]`: one validator replica, until SIGTERM/SIGINT."""

from fhirschema_bus import optional_imports

if __name__ == "__main__":  # this process is the service: before any library is imported
    optional_imports.service_process(worker=True)

from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import run_worker
from fhirschema_bus.settings import LogSettings, NatsSettings, PackageSettings, S3Settings
from fhirschema_bus.worker import WorkerSettings
from validator_service.bootstrap import ValidatorSettings, bootstrap

CONFIG = ServiceConfig(
    "validator_service", LogSettings, NatsSettings, WorkerSettings, ValidatorSettings, PackageSettings,
    S3Settings, optional=[S3Settings],
)  # fmt: skip


def main() -> None:
    run_worker(CONFIG, lambda c: bootstrap(
        settings=c.get(ValidatorSettings), nats=c.get(NatsSettings),
        worker_settings=c.get(WorkerSettings), packages=c.get(PackageSettings),
    ))  # fmt: skip


if __name__ == "__main__":
    main()
