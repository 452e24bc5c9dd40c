"""Wiring in one place: settings -> adapters -> services. Nothing connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from fhirschema_bus.credentials import redact_url, redis_options
from fhirschema_bus.jobs import JobStore as SharedJobStore
from fhirschema_bus.reload import Reloads
from fhirschema_bus.settings import (
    AuthSettings,
    CorsSettings,
    GatewaySettings,
    NatsSettings,
    PackageSettings,
    RateLimitSettings,
    RedisSettings,
    S3Settings,
)
from gateway.adapters.backlog import ValidateBacklog
from gateway.adapters.dead_letters import StreamDeadLetters
from gateway.adapters.ingest import NatsIngest
from gateway.adapters.key_file import KeyFile
from gateway.adapters.objects import SharedObjectStore
from gateway.adapters.readiness import KvReadiness
from gateway.adapters.storage import NatsSchemaRepository
from gateway.bus import Bus
from gateway.cors import CorsPolicy
from gateway.errors import BusUnavailable
from gateway.metrics import Metrics
from gateway.ports import JobStore
from gateway.service.auth import Authenticator
from gateway.service.conversion import ConversionService
from gateway.service.dispatch import Dispatcher
from gateway.service.ingest import IngestService
from gateway.service.rate_limits import LoadShedder, RateLimits
from gateway.service.readiness import ReadinessGate
from gateway.service.validation import ValidationService

if TYPE_CHECKING:
    from limits.aio.storage import Storage

    from gateway.adapters.oidc import OidcVerifier


FREEZE_AFTER_SECONDS = 1.0


def _collect_and_freeze() -> None:
    gc.collect()
    gc.freeze()


@dataclass
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    s3: S3Settings = field(default_factory=S3Settings)  # type: ignore[arg-type]  # keys from env
    redis: RedisSettings = field(default_factory=RedisSettings)
    packages: PackageSettings = field(default_factory=PackageSettings)  # what must be loaded
    auth: AuthSettings = field(default_factory=AuthSettings)  # required unless said otherwise
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)  # no origin allowed unless said


class Jobs:
    """The shared JobStore, opened on first use (NATS may come up after the gateway)."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self._store: JobStore | None = None
        self._nc: object = None

    async def __call__(self) -> JobStore:
        js = self.bus.js  # raises 503 when NATS is down
        if self._store is None or self._nc is not self.bus.nc:
            self._store = await SharedJobStore.open(js)
            self._nc = self.bus.nc
        return self._store


@dataclass
class Container:
    settings: Settings
    instance: str
    bus: Bus
    metrics: Metrics
    objects: SharedObjectStore
    redis: aioredis.Redis
    jobs: Jobs
    dead_letters: StreamDeadLetters
    schemas: NatsSchemaRepository
    readiness: ReadinessGate
    validation: ValidationService
    conversion: ConversionService
    auth: Authenticator
    key_file: KeyFile | None
    ingest: IngestService
    rate_limits: RateLimits
    backlog: ValidateBacklog
    shedder: LoadShedder
    cors: CorsPolicy
    # What the gateway applies without a restart (reload.py): register with reloads.on(...).
    reloads: Reloads = field(default_factory=Reloads)
    _freezing: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        if self.key_file is not None:
            self.key_file.start()
        await self.bus.start()
        self.backlog.start()
        # Start-up state lives as long as the process: out of full collections (a 10 MB batch body
        # is parsed faster: the Synthea batch's 202 came after 0.15-0.19 s instead of 0.27-0.5 s,
        # gateway CPU 0.14-0.17 s instead of 0.27-0.41 s). A moment after start, not on the way
        # to serving: the collection of the start-up heap costs about 0.06 s of CPU.
        self._freezing = asyncio.get_running_loop().call_later(FREEZE_AFTER_SECONDS, _collect_and_freeze)

    async def stop(self) -> None:
        if self._freezing is not None:
            self._freezing.cancel()
        await self.backlog.stop()
        if self.key_file is not None:
            await self.key_file.stop()
        await self.bus.stop()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def ping_redis(self) -> None:
        try:
            await self.redis.ping()
        except Exception as e:
            raise BusUnavailable(
                f"Redis at {redact_url(self.settings.redis.url)}: {e or type(e).__name__}"
            ) from e


def bootstrap(settings: Settings | None = None) -> Container:
    settings = settings or Settings()
    instance = f"gateway-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    bus = Bus(settings.nats, name=instance, budget=settings.gateway.publish_budget_seconds)
    metrics = Metrics()
    objects = SharedObjectStore(settings.s3)
    jobs = Jobs(bus)
    dispatch = Dispatcher(bus, objects, settings.s3.bucket_payloads, jobs)
    schemas = NatsSchemaRepository(bus)
    ingest = NatsIngest(bus)
    timeout = settings.gateway.sync_timeout_seconds
    readiness = ReadinessGate(
        KvReadiness(bus), settings.packages.package_list(), wait_seconds=settings.gateway.ready_wait_seconds
    )
    # The key file is read here: one that cannot be used stops the gateway before it serves.
    key_file = KeyFile(settings.auth.api_keys_file) if settings.auth.api_keys_file is not None else None
    reloads = Reloads()
    if key_file is not None:
        reloads.every_time(key_file.reload)  # SIGHUP re-reads it (a change is seen by itself)
    # Counted in the gateway's Redis: every replica sees the same windows.
    rate_limits = RateLimits(settings.rate_limit, lambda: _rate_limit_storage(settings.redis))
    backlog = ValidateBacklog(bus)
    shedder = LoadShedder(settings.rate_limit, backlog)
    reloads.on(RateLimitSettings, rate_limits.apply)
    reloads.on(RateLimitSettings, shedder.apply)
    cors = CorsPolicy(settings.cors)
    reloads.on(CorsSettings, cors.apply)
    return Container(
        settings=settings,
        instance=instance,
        bus=bus,
        metrics=metrics,
        objects=objects,
        redis=aioredis.from_url(
            settings.redis.url, socket_connect_timeout=2, socket_timeout=2, **redis_options(settings.redis)
        ),
        jobs=jobs,
        dead_letters=StreamDeadLetters(bus),
        schemas=schemas,
        readiness=readiness,
        validation=ValidationService(
            dispatch, metrics, timeout, settings.gateway.batch_chunk_items, readiness=readiness
        ),
        conversion=ConversionService(dispatch, schemas, timeout),
        auth=Authenticator(settings.auth.auth, key_file, _oidc(settings.auth)),
        key_file=key_file,
        rate_limits=rate_limits,
        backlog=backlog,
        shedder=shedder,
        cors=cors,
        reloads=reloads,
        ingest=IngestService(ingest, ingest, settings.packages.registry_names(), ingest),
    )


def _rate_limit_storage(redis: RedisSettings) -> Storage:
    from limits.aio.storage import RedisStorage  # only once a rate limit is set (rate_limits.py)

    return RedisStorage(f"async+{redis.url}", implementation="redispy", key_prefix="fhirschema-ratelimit")


def _oidc(auth: AuthSettings) -> OidcVerifier | None:
    """Bearer tokens are checked only with an issuer configured: PyJWT (and cryptography, about
    40 ms of CPU at start) is imported only then."""
    if not auth.oidc_issuer:
        return None
    from gateway.adapters.oidc import OidcVerifier

    return OidcVerifier(auth)
