"""Credentials and TLS for NATS and Redis, from their settings (secrets only from the
environment or secret files: config.py), and URLs fit for a log line.

One place builds what every service passes to its client: the workers' FastStream broker
(`nats_security`), the gateway's own NATS connection (`nats_options`), the gateway's and
storage's Redis clients (`redis_options`).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fhirschema_bus.settings import NatsSettings, RedisSettings

if TYPE_CHECKING:
    from faststream.nats.security import NatsSecurity


class CredentialsError(ValueError):
    """Settings that name two kinds of credentials, or half of one."""


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A client context that verifies the server (against `ca_file`, else the system's CAs) and
    presents a client certificate when one is given (mutual TLS)."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if bool(cert_file) != bool(key_file):
        raise CredentialsError("a TLS client certificate needs both its certificate and its key file")
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def _nats_auth(settings: NatsSettings) -> tuple[dict[str, Any], ssl.SSLContext | None]:
    """The checked credentials as `nats.connect` keywords, and the TLS context (None: plain)."""
    kinds = [k for k, on in (("user/password", settings.user or settings.password),
                             ("creds_file", settings.creds_file),
                             ("nkey_seed_file", settings.nkey_seed_file)) if on]  # fmt: skip
    if len(kinds) > 1:
        raise CredentialsError(
            f"NATS credentials: set one of user/password, creds_file, nkey_seed_file (got {kinds})"
        )
    if (settings.user or settings.password) and not (settings.user and settings.password):
        raise CredentialsError(
            "NATS credentials: FHIRSCHEMA_NATS_USER needs FHIRSCHEMA_NATS_PASSWORD and back"
        )
    tls = settings.url.startswith("tls://") or any(
        (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    )
    context = (
        tls_context(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) if tls else None
    )
    auth: dict[str, Any] = {}
    if settings.user and settings.password:
        auth = {"user": settings.user, "password": settings.password.get_secret_value()}
    elif settings.creds_file:
        auth = {"user_credentials": settings.creds_file}
    elif settings.nkey_seed_file:
        auth = {"nkeys_seed": settings.nkey_seed_file}
    return auth, context


def nats_security(settings: NatsSettings) -> NatsSecurity | None:
    """The FastStream security object for these settings (None: plain, anonymous). FastStream is
    imported here, not with this module: the gateway connects with nats-py alone (`nats_options`)
    and so starts without it."""
    from faststream.nats.security import NatsCredentials, NatsNKey, NatsSecurity, NatsUserPassword

    auth, context = _nats_auth(settings)
    common: dict[str, Any] = {"ssl_context": context, "tls_hostname": settings.tls_hostname or None}
    if "user" in auth:
        return NatsUserPassword(auth["user"], auth["password"], **common)
    if "user_credentials" in auth:
        return NatsCredentials(auth["user_credentials"], **common)
    if "nkeys_seed" in auth:
        return NatsNKey(auth["nkeys_seed"], **common)
    return NatsSecurity(**common) if context is not None else None


def nats_options(settings: NatsSettings) -> dict[str, Any]:
    """Keyword arguments for `nats.connect`: the same credentials and TLS as `nats_security`
    gives the workers' broker (test_credentials.py holds the two to each other)."""
    auth, context = _nats_auth(settings)
    if not auth and context is None:
        return {}
    options = {**auth, "tls": context, "tls_hostname": settings.tls_hostname or None}
    return {k: v for k, v in options.items() if v is not None}


def redis_options(settings: RedisSettings) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.from_url(settings.url, ...)`."""
    options: dict[str, Any] = {}
    if settings.username:
        options["username"] = settings.username
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    if settings.url.startswith("rediss://"):
        options["ssl_ca_certs"] = settings.tls_ca_file or None
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise CredentialsError("a TLS client certificate needs both its certificate and its key file")
        if settings.tls_cert_file:
            options["ssl_certfile"], options["ssl_keyfile"] = settings.tls_cert_file, settings.tls_key_file
    elif settings.tls_ca_file or settings.tls_cert_file:
        raise CredentialsError("Redis TLS files are set but the URL is not rediss://")
    return options


def redact_url(url: str) -> str:
    """The URL without a password (`nats://user:***@host`): what a log line may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
