"""Credentials and TLS options (fhirschema_bus/credentials.py): built from settings whose secrets
come from the environment, never shown in a log line; TLS against a real nats-server."""

from __future__ import annotations

import logging
from pathlib import Path

import nats
import pytest
import trustme

from fhirschema_bus.credentials import (
    CredentialsError,
    nats_options,
    nats_security,
    redact_url,
    redis_options,
)
from fhirschema_bus.servers import start_nats
from fhirschema_bus.settings import NatsSettings, RedisSettings, S3Settings

SECRETS = {
    "FHIRSCHEMA_NATS_PASSWORD": "nats-pw-7f3a9c",
    "FHIRSCHEMA_S3_ACCESS_KEY": "s3-access-51be",
    "FHIRSCHEMA_S3_SECRET_KEY": "s3-secret-0d4e77",
    "FHIRSCHEMA_REDIS_PASSWORD": "redis-pw-c2a1",
}


def test_no_secret_in_a_log_line_of_the_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FHIRSCHEMA_NATS_USER", "validator")
    nats_s, s3, redis = NatsSettings(), S3Settings(), RedisSettings()  # type: ignore[call-arg]
    assert nats_s.password and nats_s.password.get_secret_value() == SECRETS["FHIRSCHEMA_NATS_PASSWORD"]
    log = logging.getLogger("fhirschema.test")
    with caplog.at_level(logging.DEBUG):
        for settings in (nats_s, s3, redis):
            log.info("settings %r / %s / %s", settings, settings, settings.model_dump())
    assert "validator" in caplog.text and "s3-access" not in caplog.text  # the lines were written
    assert not [name for name, value in SECRETS.items() if value in caplog.text]


def test_a_url_in_a_log_line_has_no_password() -> None:
    assert redact_url("nats://svc:s3cr3t@nats:4222") == "nats://svc:***@nats:4222"
    assert redact_url("rediss://:pw@redis:6380/0") == "rediss://:***@redis:6380/0"
    assert redact_url("nats://nats:4222") == "nats://nats:4222"


def test_nats_credential_kinds(tmp_path: Path) -> None:
    assert nats_options(NatsSettings(url="nats://h:4222")) == {}
    opts = nats_options(NatsSettings(user="gateway", password="pw"))  # type: ignore[arg-type]
    assert opts == {"user": "gateway", "password": "pw"}
    creds = tmp_path / "svc.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n")
    assert nats_options(NatsSettings(creds_file=str(creds))) == {"user_credentials": str(creds)}
    seed = tmp_path / "svc.nk"
    seed.write_text("SUAM...")
    assert nats_options(NatsSettings(nkey_seed_file=str(seed))) == {"nkeys_seed": str(seed)}
    with pytest.raises(CredentialsError, match="one of"):
        nats_security(NatsSettings(user="a", password="b", creds_file=str(creds)))  # type: ignore[arg-type]
    with pytest.raises(CredentialsError, match="needs"):
        nats_security(NatsSettings(user="a"))
    with pytest.raises(CredentialsError, match="certificate and its key"):
        nats_security(NatsSettings(url="tls://h:4222", tls_cert_file=str(creds)))


def test_the_gateways_nats_options_are_the_workers_broker_security(tmp_path: Path) -> None:
    """Two builders, one answer: the gateway's `nats.connect` keywords (without FastStream, which
    it does not import) are what FastStream makes of the workers' security object."""
    from faststream.nats.security import parse_security

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    (tmp_path / "svc.creds").write_text("x")
    kinds = [
        NatsSettings(),
        NatsSettings(tls_hostname="nats.internal"),  # no TLS, no credentials: nothing
        NatsSettings(user="u", password="p", tls_hostname="nats.internal"),  # type: ignore[arg-type]
        NatsSettings(creds_file=str(tmp_path / "svc.creds")),
        NatsSettings(nkey_seed_file=str(tmp_path / "svc.creds"), url="tls://h:4222"),
        NatsSettings(url="tls://h:4222", tls_ca_file=str(ca_file), tls_hostname="nats.internal"),
    ]
    for settings in kinds:
        expected = {
            k: v for k, v in parse_security(nats_security(settings)).items() if v not in (None, False)
        }
        got = nats_options(settings)
        assert got.keys() == expected.keys(), settings
        assert {k: v for k, v in got.items() if k != "tls"} == {
            k: v for k, v in expected.items() if k != "tls"
        }
        assert type(got.get("tls")) is type(expected.get("tls"))


def test_redis_credentials_and_tls(tmp_path: Path) -> None:
    assert redis_options(RedisSettings()) == {}
    opts = redis_options(RedisSettings(username="storage", password="pw"))  # type: ignore[arg-type]
    assert opts == {"username": "storage", "password": "pw"}
    ca = tmp_path / "ca.pem"
    opts = redis_options(RedisSettings(url="rediss://redis:6380/0", tls_ca_file=str(ca)))
    assert opts == {"ssl_ca_certs": str(ca)}
    with pytest.raises(CredentialsError, match="not rediss"):
        redis_options(RedisSettings(url="redis://redis:6379/0", tls_ca_file=str(ca)))


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("nats-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(base / "server.pem"))
    cert.private_key_pem.write_to_path(str(base / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(base / "server.crt"))
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    conf = base / "tls.conf"
    conf.write_text(f'tls {{ cert_file: "{base / "server.crt"}", key_file: "{base / "server.key"}" }}\n')
    srv = start_nats(base, config=conf)
    yield srv, base / "ca.pem"
    srv.stop()


async def test_tls_to_a_real_nats_server(tls_nats) -> None:  # type: ignore[no-untyped-def]
    srv, ca = tls_nats
    url = srv.url.replace("nats://", "tls://")
    nc = await nats.connect(
        url, max_reconnect_attempts=0, **nats_options(NatsSettings(url=url, tls_ca_file=str(ca)))
    )
    try:
        assert nc.is_connected and nc.connected_url is not None
        await nc.publish("x", b"y")
        await nc.flush()
    finally:
        await nc.close()
    # The same server, not trusted without its CA: the connection is refused, not downgraded.
    with pytest.raises(Exception, match=r"(?i)certificate|ssl|tls"):
        await nats.connect(
            url, max_reconnect_attempts=0, allow_reconnect=False, **nats_options(NatsSettings(url=url))
        )
