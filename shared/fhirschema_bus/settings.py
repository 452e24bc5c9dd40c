"""Settings, one pydantic-settings model per concern. Secrets have no defaults.

Each model is a config `Section` (config.py): flags, environment, secret files, config file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from fhirschema_bus.config import Section


class LogSettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_LOG_")
    section = "log"
    reloadable = frozenset({"level"})

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"  # of every logger
    # json: one object per line (time, level, service, message, trace/span/request/job ids; logs.py);
    # text: for people; auto: text when stderr is a terminal, else json (containers, log files).
    format: Literal["auto", "json", "text"] = "auto"

    def apply(self) -> None:
        """The level on the root logger (a reload callback, and at start)."""
        logging.getLogger().setLevel(self.level)


class NatsSettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_NATS_")
    section = "nats"

    url: str = "nats://127.0.0.1:4222"
    max_deliver: int = 5  # then the message goes to the dead-letter stream
    ack_wait_seconds: float = 30.0
    # Server-side BackOff of the durable consumers. Keep it empty: when set, NATS uses
    # backoff[0] as the ack wait (in-flight work is redelivered after 0.5 s, whatever
    # ack_wait_seconds says) and ignores the delay of a NAK (measured with nats-server 2.12).
    backoff_seconds: list[float] = Field(default_factory=list)
    # Delays between retries of a failed message: the worker NAKs with these (one per delivery).
    retry_delays_seconds: list[float] = Field(default_factory=lambda: [0.5, 2.0, 5.0, 15.0])
    # Credentials (fhirschema_bus/credentials.py), one kind: a user and password (the user is the
    # service's in the permissions nats_permissions.py generates), or a .creds file (JWT + NKey
    # seed: decentralised auth), or an NKey seed file. The password only from the environment or
    # a secret file; the files are paths (mounted Secrets). Never in the URL: URLs are logged.
    user: str = ""
    password: SecretStr | None = None
    creds_file: str = ""
    nkey_seed_file: str = ""
    # TLS: on with a tls:// URL or any file below. A private CA's bundle (else the system's); a
    # client certificate and key for mutual TLS; the name to verify when it is not the URL's host.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_hostname: str = ""


class S3Settings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_S3_")
    section = "s3"

    endpoint: str = "127.0.0.1:8333"  # host:port, as minio.Minio expects
    access_key: SecretStr
    secret_key: SecretStr
    secure: bool = False
    region: str = "us-east-1"
    bucket_schemas: str = "fhirschema-schemas"
    bucket_packages: str = "fhirschema-packages"
    bucket_results: str = "fhirschema-results"
    bucket_payloads: str = "fhirschema-payloads"


class RedisSettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_REDIS_")
    section = "redis"

    url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS; no password in it (URLs are logged)
    username: str = ""  # an ACL user (Redis 6+); empty: the default user
    password: SecretStr | None = None  # only from the environment or a secret file
    # TLS (rediss://): a private CA's bundle (else the system's); a client certificate for mutual TLS.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


class StorageSettings(Section):
    """The storage service's schema index: Redis holds it for every storage replica, S3 the
    durable copy it is rebuilt from when Redis loses it (restarted empty, flushed)."""

    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_STORAGE_")
    section = "storage"

    # How often a replica checks Redis' index generation without traffic (every request checks it too).
    index_check_seconds: float = 1.0
    # How long a request waits for a rebuild in progress before it is answered 503 (retry).
    index_wait_seconds: float = 8.0
    # A rebuilding replica's claim (Redis key with this expiry): another takes over after it.
    rebuild_claim_seconds: float = 120.0


class PackageSettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_")
    section = "packages"

    # Registries in order (first success wins): a FHIR registry's base URL, `npm+<url>` for an
    # npm-style registry (tarballs from dist.tarball), or a folder of <name>#<version>.tgz files.
    package_sources: str = "https://packages.fhir.org,https://packages2.fhir.org/packages"
    packages: str = "hl7.fhir.r4.core#4.0.1"  # ingested at start-up by ig-ingest, with dependencies

    def source_list(self) -> list[str]:
        return [s.strip() for s in self.package_sources.split(",") if s.strip()]

    def package_list(self) -> list[str]:
        return [p.strip() for p in self.packages.split(",") if p.strip()]

    def registry_names(self) -> list[str]:
        """The registries as ig-ingest names them: what a request's `registry` may say."""
        return [s.removeprefix("npm+").rstrip("/") for s in self.source_list()]


class GatewaySettings(Section):
    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_GATEWAY_")
    section = "gateway"

    host: str = "127.0.0.1"
    port: int = 8080
    sync_timeout_seconds: float = 10.0
    max_body_bytes: int = 50 * 1024 * 1024
    max_header_bytes: int = 64 * 1024  # start line + headers of one request; more: 431 (http_server.py)
    max_batch_items: int = 100_000
    # How long a batch is retried across a NATS outage (its job created, its messages published;
    # a message id makes repeats safe) before the request gets a 503 with Retry-After, or the job
    # fails with its counts equal to its stored results. Keep it under the streams' duplicate window.
    publish_budget_seconds: float = 30.0
    # A validation request that arrives before a validator replica holds the configured packages
    # waits this long for one, then gets a 503 with Retry-After saying what is missing.
    ready_wait_seconds: float = 5.0
    # On SIGTERM: requests in flight get this long to finish (uvicorn's graceful shutdown).
    drain_seconds: int = 4
    # Batch items packed per validate message (ValidateChunk, under CHUNK_BYTES); 1: one each.
    batch_chunk_items: int = (
        128  # measured: 32 -> 3.1k res/s, 64 -> 4.3-6.3k, 128 -> 5.2-6.8k, 256 -> 3.4-3.9k
    )


class AuthSettings(Section):
    """Who may call the gateway (docs/security.md): API keys, kept as SHA-256 digests with their
    scopes in a key file, and OIDC bearer JWTs. The key file's content is re-read when it changes
    and on SIGHUP, the issuer's keys every oidc_jwks_cache_seconds; these settings themselves
    apply at start."""

    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_")
    section = "auth"

    # required: every route but /health, /ready, /metrics, /metadata and the API documents needs
    # a credential with the route's scope. off: anyone may call anything (`make up` runs so).
    auth: Literal["required", "off"] = "required"
    # One key per line: `<sha256 hex of the key> <scope,scope,...> <name>`; `#` starts a comment.
    api_keys_file: Path | None = None
    # OAuth2 / OIDC bearer JWTs (Authorization: Bearer): the issuer (`iss`, checked) whose keys
    # sign them; the JWKS is found by OIDC discovery unless oidc_jwks_url names it.
    oidc_issuer: str = ""
    oidc_audience: str = ""  # `aud` must hold it (required with an issuer)
    oidc_jwks_url: str = ""
    oidc_jwks_cache_seconds: float = 300.0  # a key removed from the JWKS is refused after this
    oidc_algorithms: str = "RS256,RS384,RS512,PS256,ES256,ES384"  # never `none`, never HMAC
    oidc_leeway_seconds: float = 30.0  # clock skew allowed on exp / nbf / iat

    def algorithm_list(self) -> list[str]:
        return [a.strip() for a in self.oidc_algorithms.split(",") if a.strip()]

    def problem(self) -> str | None:
        """Why the gateway cannot start with these settings (None: it can)."""
        if self.auth == "required" and self.api_keys_file is None and not self.oidc_issuer:
            return (
                "FHIRSCHEMA_AUTH=required needs credentials to check: set FHIRSCHEMA_API_KEYS_FILE "
                "and/or FHIRSCHEMA_OIDC_ISSUER (or FHIRSCHEMA_AUTH=off to let anyone call the gateway)"
            )
        if self.oidc_issuer and not self.oidc_audience:
            return "FHIRSCHEMA_OIDC_ISSUER needs FHIRSCHEMA_OIDC_AUDIENCE: tokens for other services must not pass"
        if bad := [a for a in self.algorithm_list() if a.lower() == "none" or a.upper().startswith("HS")]:
            return f"FHIRSCHEMA_OIDC_ALGORITHMS: {', '.join(bad)} cannot be used with an issuer's public keys"
        return None


class RateLimitSettings(Section):
    """How much one caller may ask of the gateway (counted in Redis, shared by every gateway
    replica), and when the gateway refuses new validations because the validators are behind."""

    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_")
    section = "rate_limit"
    reloadable = frozenset(
        {"rate_limit", "rate_limit_scopes", "shed_validate_pending", "shed_retry_after_seconds"}
    )

    # Per caller (API key or token name; the client address when auth is off), e.g. `600/minute`
    # or `20/second;600/minute` (the `limits` notation); empty: no limit.
    rate_limit: str = ""
    # Per-scope overrides, JSON: {"validate": "6000/minute", "schemas:write": "60/hour"}; a route
    # of that scope is counted apart, against its own limit.
    rate_limit_scopes: dict[str, str] = Field(default_factory=dict)
    # Load shedding: a new validation (sync, batch, $validate, WebSocket) is answered 503 with
    # Retry-After while more than this many validate messages wait for a validator (JetStream
    # pending, polled every second); 0: never shed.
    shed_validate_pending: int = 0
    shed_retry_after_seconds: int = 5

    @field_validator("rate_limit")
    @classmethod
    def _parses(cls, value: str) -> str:
        if value.strip():
            _parse_limit(value)
        return value.strip()

    @field_validator("rate_limit_scopes")
    @classmethod
    def _scopes_parse(cls, value: dict[str, str]) -> dict[str, str]:
        for scope, limit in value.items():
            _parse_limit(limit, scope)
        return value


def _parse_limit(value: str, scope: str = "") -> None:
    from limits import parse_many  # here: settings import nothing heavy for other services

    try:
        parse_many(value)
    except ValueError as e:
        where = f" (scope {scope})" if scope else ""
        raise ValueError(
            f"{value!r}{where} is not a rate limit like 600/minute or 20/second;600/minute"
        ) from e


class CorsSettings(Section):
    """Which web origins may call the gateway from a browser (CORS); none by default."""

    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_")
    section = "cors"
    reloadable = frozenset({"cors_origins", "cors_max_age_seconds"})

    # Comma-separated origins (`https://app.example.org,https://admin.example.org`), or `*`.
    cors_origins: str = ""
    cors_max_age_seconds: int = 600  # how long a browser may cache a preflight's answer

    def origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]


class IngestSettings(Section):
    """The IG pipeline (ig-ingest): registry client limits, discovery, schedule, retention."""

    model_config = SettingsConfigDict(env_prefix="FHIRSCHEMA_IG_")
    section = "ig"

    # JSON object: registry base URL -> bearer token, sent to that registry's host only.
    registry_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # More hosts a registry may send us to (comma-separated origins): packages.fhir.org's own
    # tarball URLs point at packages.simplifier.net, the same service. Nothing else is contacted.
    allowed_hosts: str = "https://packages.simplifier.net"
    ci_build_url: str = "https://build.fhir.org/ig"  # `#current` packages; empty: not resolved
    # package-feeds.json (URL or path; see FHIR/ig-registry) for name masks; empty: catalog only.
    feeds_url: str = ""
    timeout_seconds: float = 30.0  # per connect / read
    download_timeout_seconds: float = 300.0  # per whole request
    attempts: int = 4  # per request, on 5xx, 429 and transport errors
    max_retry_after_seconds: float = 30.0  # a longer Retry-After moves on to the next registry
    max_download_bytes: int = 256 * 1024 * 1024
    max_unpacked_bytes: int = 1024 * 1024 * 1024  # decompression cap (gzip bombs)
    max_entries: int = 200_000
    concurrency: int = 4  # packages downloaded and converted at once per job
    convert_chunk: int = 100  # StructureDefinitions per converter request
    keep_versions: int = 0  # retention: newest N versions per package (0: keep all)
    # The schedule: every replica looks this often; the leader's lease is taken over by another
    # replica after it went unrenewed this long (renewed every poll: keep it several polls long).
    schedule_poll_seconds: float = 5.0
    lease_seconds: float = 30.0
    webhook_url: str = ""  # failures are POSTed here as JSON (retried), when set
    webhook_token: SecretStr | None = None  # sent as a bearer token to the webhook
    webhook_attempts: int = 5
