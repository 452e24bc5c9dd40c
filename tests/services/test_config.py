"""Configuration sources and their precedence, secrets, and reloads (config.py, reload.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhirschema_bus import config
from fhirschema_bus.config import ConfigError, Layers, ServiceConfig
from fhirschema_bus.reload import ConfigWatcher, Reloads
from fhirschema_bus.settings import GatewaySettings, LogSettings, NatsSettings, S3Settings
from fhirschema_bus.worker import WorkerSettings

GATEWAY = ServiceConfig("gateway", LogSettings, GatewaySettings, NatsSettings, S3Settings)
WORKER = ServiceConfig("worker", LogSettings, NatsSettings, WorkerSettings, S3Settings, optional=[S3Settings])


@pytest.fixture(autouse=True)
def clean_layers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("FHIRSCHEMA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIRSCHEMA_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("FHIRSCHEMA_S3_SECRET_KEY", "sk")
    saved = config.active()
    yield
    config.use(saved)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_flags_env_file_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = write(tmp_path / "c.toml", '[gateway]\nport = 9000\nhost = "0.0.0.0"\nsync_timeout_seconds = 3\n'
                 '[nats]\nurl = "nats://file:4222"\n')  # fmt: skip
    monkeypatch.setenv("FHIRSCHEMA_GATEWAY_HOST", "10.0.0.1")
    monkeypatch.setenv("FHIRSCHEMA_NATS_URL", "nats://env:4222")
    loaded = GATEWAY.load(["--config", str(file), "--nats-url", "nats://flag:4222"])
    gw = loaded.get(GatewaySettings)
    assert (gw.port, gw.host, gw.sync_timeout_seconds) == (9000, "10.0.0.1", 3.0)  # file, env, file
    assert gw.max_batch_items == 100_000  # default
    assert loaded.get(NatsSettings).url == "nats://flag:4222"
    # The layers are the process's: a section built later (deep in a bootstrap) reads them too.
    assert NatsSettings().url == "nats://flag:4222" and GatewaySettings().port == 9000


def test_yaml_and_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = write(
        tmp_path / "c.yaml", "log:\n  level: DEBUG\nworker:\n  fetch_batch: 4\nvalidator:\n  lru_size: 2\n"
    )
    monkeypatch.setenv("FHIRSCHEMA_CONFIG", str(file))
    loaded = WORKER.load([])  # [validator] is another service's table: not an error here
    assert loaded.get(LogSettings).level == "DEBUG" and loaded.get(WorkerSettings).fetch_batch == 4


def test_secrets_never_from_the_file_or_flags(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[s3]\nsecret_key = "hunter2"\n')
    with pytest.raises(ConfigError, match="FHIRSCHEMA_S3_SECRET_KEY in the environment"):
        GATEWAY.load(["--config", str(file)])
    with pytest.raises(SystemExit):
        GATEWAY.load(["--s3-secret-key", "hunter2"])  # no such flag


def test_secrets_from_a_secrets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FHIRSCHEMA_S3_SECRET_KEY")
    (tmp_path / "fhirschema_s3_secret_key").write_text("from-a-file")
    monkeypatch.setenv("FHIRSCHEMA_SECRETS_DIR", str(tmp_path))
    s3 = GATEWAY.load([]).get(S3Settings)
    assert s3.secret_key.get_secret_value() == "from-a-file"


def test_missing_secrets_required_or_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FHIRSCHEMA_S3_SECRET_KEY")
    with pytest.raises(ConfigError, match=r"\[s3\].*secret_key"):
        GATEWAY.load([])
    assert WORKER.load([]).maybe(S3Settings) is None  # runs without, and says what it cannot do


@pytest.mark.parametrize(
    "text, message",
    [
        ("[gateway]\nprot = 1\n", "prot"),  # a typo is not silently ignored
        ("[gateway]\nport = 'eighty'\n", "port"),
        ("[gateway\n", "cannot be read"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    file = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=message):
        GATEWAY.load(["--config", str(file)])


def test_unknown_file_kind_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml"):
        GATEWAY.load(["--config", str(write(tmp_path / "c.ini", ""))])
    with pytest.raises(ConfigError, match="not found"):
        GATEWAY.load(["--config", str(tmp_path / "nope.toml")])


async def test_reload_applies_reloadable_fields_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = write(tmp_path / "c.toml", '[log]\nlevel = "INFO"\n[nats]\nmax_deliver = 5\n')
    loaded = GATEWAY.load(["--config", str(file)])
    reloads = Reloads()
    seen: list[str] = []
    reloads.on(LogSettings, lambda s: seen.append(s.level))
    watcher = ConfigWatcher(loaded, reloads)
    write(file, '[log]\nlevel = "DEBUG"\n[nats]\nmax_deliver = 9\n')
    with caplog.at_level(logging.INFO, "fhirschema.reload"):
        report = await watcher.reload()
    assert report.applied == {"log": ["level"]} and report.restart_only == ["nats.max_deliver"]
    assert seen == ["DEBUG"] and loaded.get(LogSettings).level == "DEBUG"
    assert loaded.get(NatsSettings).max_deliver == 5  # the running value, until a restart
    assert "only after a restart: nats.max_deliver" in caplog.text
    write(file, "[log]\nlevel = 'LOUD'\n")  # does not validate: nothing changes
    report = await watcher.reload()
    assert report.error and "level" in report.error and seen == ["DEBUG"]


async def test_a_failing_callback_does_not_stop_the_others(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[log]\nlevel = "INFO"\n')
    loaded = GATEWAY.load(["--config", str(file)])
    reloads, seen = Reloads(), []

    def broken(_: LogSettings) -> None:
        raise RuntimeError("boom")

    async def fine(s: LogSettings) -> None:
        seen.append(s.level)

    reloads.on(LogSettings, broken)
    reloads.on(LogSettings, fine)
    write(file, '[log]\nlevel = "ERROR"\n')
    assert (await ConfigWatcher(loaded, reloads).reload()).applied == {"log": ["level"]}
    assert seen == ["ERROR"]


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_sighup_and_file_change_trigger_a_reload(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[log]\nlevel = "INFO"\n')
    loaded = GATEWAY.load(["--config", str(file)])
    reloads, seen = Reloads(), []
    reloads.on(LogSettings, lambda s: seen.append(s.level))
    async with ConfigWatcher(loaded, reloads, debounce_ms=50).running():
        await asyncio.sleep(0.3)  # the watch is in place
        # An editor's way: a new file renamed over the old one.
        write(tmp_path / "c.toml.new", '[log]\nlevel = "WARNING"\n').replace(file)
        await wait_for(lambda: seen == ["WARNING"])
        # kubectl edit / a ConfigMap update would trigger the watch too; SIGHUP re-reads anyway.
        file.write_text('[log]\nlevel = "ERROR"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: seen[-1] == "ERROR")


def test_flags_are_the_variables_in_kebab_case() -> None:
    assert config.flag_name(GatewaySettings, "max_body_bytes") == "gateway-max-body-bytes"
    help_text = GATEWAY.parser().format_help()
    assert "--gateway-port" in help_text and "--nats-url" in help_text
    assert "--s3-secret-key" not in help_text and "--s3-access-key" not in help_text  # no flags


def test_layers_default_to_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.use(Layers())
    monkeypatch.setenv("FHIRSCHEMA_CONFIG", str(write(tmp_path / "c.toml", "[gateway]\nport = 7\n")))
    assert GatewaySettings().port == 7
