"""`python -m converter_service [--config FILE] [flags]`: one converter replica, until SIGTERM/SIGINT."""

from fhirschema_bus import optional_imports

if __name__ == "__main__":  # this process is the service: before any library is imported
    optional_imports.service_process(worker=True)

from converter_service.bootstrap import bootstrap
from fhirschema_bus.config import ServiceConfig
from fhirschema_bus.entry import run_worker
from fhirschema_bus.settings import LogSettings, NatsSettings, S3Settings
from fhirschema_bus.worker import WorkerSettings

CONFIG = ServiceConfig(
    "converter_service", LogSettings, NatsSettings, WorkerSettings, S3Settings, optional=[S3Settings]
)


def main() -> None:
    run_worker(CONFIG, lambda c: bootstrap(nats=c.get(NatsSettings), worker_settings=c.get(WorkerSettings)))


if __name__ == "__main__":
    main()
