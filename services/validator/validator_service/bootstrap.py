"""Wiring for the validator service: settings → adapters → service → FastStream subscribers.

Replicas bind to the shared durables DURABLE_VALIDATOR_ONE / DURABLE_VALIDATOR_BATCH, so
JetStream splits the work between them. Nothing connects before `Worker.app` starts.

Where packages come from: the repository (default) — the replica follows the repository state
(KV watch), downloads the registered tarballs of its FHIR version from S3 and the uploaded
schemas from storage (materialise.py) — or local files (`FHIRSCHEMA_VALIDATOR_PACKAGES`, no
storage needed: tests, offline use). Either way its subscribers pull nothing until it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, PullSub
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from fhirschema import engine_build
from fhirschema.context import FhirContext
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator
from fhirschema_bus import metrics, repository, tasks
from fhirschema_bus import subjects as s
from fhirschema_bus.config import Section
from fhirschema_bus.contracts import RepositoryState, ValidateChunk, ValidateOptions, ValidateRequest
from fhirschema_bus.jobs import JobStore
from fhirschema_bus.object_store import ObjectStore
from fhirschema_bus.probes import Readiness
from fhirschema_bus.results import NatsResults
from fhirschema_bus.settings import NatsSettings, PackageSettings, S3Settings
from fhirschema_bus.storage import StorageClient, nats_request
from fhirschema_bus.worker import Worker, WorkerSettings

from .contexts import Contexts
from .materialise import LocalPackages, RepositorySync, Uploads
from .service import ValidationService
from .tarball_cache import TarballCache

log = logging.getLogger("fhirschema.validator")
SERVICE = "validator"
States = Callable[[], AsyncIterator[RepositoryState]]


class ValidatorSettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_VALIDATOR_")
    section = "validator"

    packages: str = ""  # comma-separated package files: local mode, not the repository
    # The core package of the replica's FHIR version: no verdict before it is loaded. Packages
    # registered for another FHIR version (package.json fhirVersions) are not this replica's.
    fhir_core: str = "hl7.fhir.r4.core#4.0.1"
    lru_size: int = 32  # compiled validators kept per package context
    contexts: int = 8  # package contexts kept (requests naming packages); the default one stays
    storage_timeout_seconds: float = 10.0  # fetching uploaded schemas
    # Package tarballs unpacked by SHA-256 (tarball_cache.py): a restart reads them from here,
    # not S3 (R4 core: ~0.1 s instead of 0.7-3 s). Empty: no cache.
    cache_dir: str = "~/.cache/fhirschema/validator-packages"

    def package_list(self) -> list[str]:
        return [p.strip() for p in self.packages.split(",") if p.strip()]


def make_validator(fhir: FhirContext, terminology: Terminology, options: ValidateOptions) -> Validator:
    # Imported here: FHIRPath (fhirpathpy, antlr4) is ~10% of a replica's start and no part of
    # its readiness; warm_up() imports it once the replica said it is ready.
    from fhirschema.invariants import Invariants

    invariants = Invariants() if options.invariants else None
    return Validator(fhir, invariants=invariants, terminology=terminology, strict=options.strict)


def warm_up(contexts: Contexts) -> None:
    """What the first request would otherwise wait for: FHIRPath imported, the default
    validator built (requests arriving meanwhile queue behind it in the same threads)."""
    t0 = time.perf_counter()
    contexts.validator((), (), ValidateOptions())
    log.info("default validator built in %.2f s", time.perf_counter() - t0)


def bootstrap(
    *,
    settings: ValidatorSettings | None = None,
    nats: NatsSettings | None = None,
    worker_settings: WorkerSettings | None = None,
    packages: PackageSettings | None = None,
    objects: ObjectStore | None = None,
    uploads: Uploads | None = None,
    states: States | None = None,
) -> Worker:
    """`objects`: S3 (package tarballs, payloads by reference; default: from FHIRSCHEMA_S3_*);
    `uploads`: storage (default: request/reply on this worker's connection); `states`: the
    repository states to follow (default: the KV watch)."""
    settings = settings or ValidatorSettings()
    worker = Worker(SERVICE, nats=nats, settings=worker_settings)
    executor = ThreadPoolExecutor(worker.settings.threads, thread_name_prefix="validate")
    contexts = Contexts(make_validator, settings.lru_size, settings.contexts)
    state = worker.state
    s3 = objects or _object_store()

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def wire() -> None:
        service = ValidationService(
            contexts,
            NatsResults(worker.connection, worker.js),
            await JobStore.open(worker.js),
            executor,
            payloads=s3,
            instance=worker.instance,
        )
        state["service"], state["contexts"] = service, contexts
        local = settings.package_list()
        storage = uploads or StorageClient(nats_request(worker.connection), settings.storage_timeout_seconds)
        required = [] if local else (packages or PackageSettings()).package_list()
        cache = TarballCache(Path(settings.cache_dir).expanduser() if settings.cache_dir else None)
        sync = RepositorySync(contexts, s3, storage, blocking, core=settings.fhir_core, required=required,
                              cache=cache)  # fmt: skip
        state["sync"] = sync
        engine = "compiled" if engine_build.compiled() else "python"
        metrics.set_build_info(SERVICE, worker.version, engine)
        if engine == "python":
            log.warning("the validator engine runs as Python source (about 3x slower): build it with "
                        "`make engine`, or use the validator image, which compiles it")  # fmt: skip
        worker.details = lambda: {
            "handled": service.handled, "skipped": service.skipped, "validators": len(contexts),
            "engine": engine, "repository_revision": sync.revision,
            "packages": sorted(contexts.materialised.packages),
        }  # fmt: skip

        async def publish(readiness: Readiness) -> None:
            await worker.set_readiness(readiness)
            if readiness.ready and "warm" not in state:  # after, not before, the replica is ready
                state["warm"] = asyncio.ensure_future(blocking(warm_up, contexts))

        await worker.set_readiness(Readiness(False, "loading packages"))
        if local:
            t0 = time.perf_counter()
            files = LocalPackages(local, settings.fhir_core, cache)
            contexts.replace(await blocking(files.load))
            log.info("packages loaded in %.2f s: %s", time.perf_counter() - t0, ", ".join(local))
            await publish(await sync.readiness(RepositoryState()))
            files.write_cache()
        else:
            follow = states or (lambda: repository.follow(worker.js))
            state["follow"] = asyncio.create_task(sync.follow(follow(), publish))

    async def close() -> None:
        await tasks.stop(state.get("follow"))  # re-cancelled: one in a NATS request may swallow it
        executor.shutdown(wait=False, cancel_futures=True)

    worker.on_startup(wire)
    worker.on_shutdown(close)
    register_subscribers(worker, state)
    return worker


def register_subscribers(worker: Worker, state: dict[str, Any]) -> None:
    stream = JStream(s.STREAM_REQUESTS, declare=False)  # ensure_topology owns the streams
    # Several messages per pull request (one round trip), handled by a pool of workers.
    pull = PullSub(batch_size=worker.settings.fetch_batch, timeout=1.0)
    # Batch messages are mostly chunks of up to 128 items: pulling many at once would let one
    # replica take a whole job while the others idle.
    batch_pull = PullSub(batch_size=worker.settings.chunk_fetch, timeout=1.0)
    workers = worker.settings.max_workers

    one = worker.gated(worker.broker.subscriber(
        s.VALIDATE_ONE, stream=stream, durable=s.DURABLE_VALIDATOR_ONE, pull_sub=pull,
        max_workers=workers, ack_policy=AckPolicy.MANUAL, title="validate-one",
        description="Validate one resource; the result goes to reply_to and the RESULTS stream.",
    ))  # fmt: skip
    batch = worker.gated(worker.broker.subscriber(
        s.VALIDATE_BATCH_ITEM, stream=stream, durable=s.DURABLE_VALIDATOR_BATCH, pull_sub=batch_pull,
        max_workers=worker.settings.chunk_workers, ack_policy=AckPolicy.MANUAL, title="validate-batch-item",
        description=(
            "Validate one item of a batch job (ValidateRequest) or a chunk of items (ValidateChunk); "
            "each result is stored once (a chunk's results as ValidateResultChunk messages) and "
            "counted once."
        ),
    ))  # fmt: skip

    @one
    async def validate_one(req: ValidateRequest) -> None:
        await state["service"].handle(req)

    @batch
    async def validate_batch_item(req: ValidateRequest | ValidateChunk) -> None:
        if isinstance(req, ValidateChunk):
            await state["service"].handle_chunk(req)
        else:
            await state["service"].handle(req)


def _object_store() -> ObjectStore | None:
    try:
        return ObjectStore(S3Settings())  # type: ignore[call-arg]  # credentials from the environment
    except ValidationError:
        log.warning("no S3 credentials (FHIRSCHEMA_S3_*): package tarballs and requests by "
                    "resource_ref cannot be read")  # fmt: skip
        return None
