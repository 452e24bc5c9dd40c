"""Where a service's settings come from: command-line flags, the environment, secret files, a
config file (TOML or YAML), then the defaults — in that order of precedence.

Every settings model is a `Section` (settings.py): its table in the config file is named by
`section`, its environment variables by its `env_prefix`, its flags are the variables' names in
kebab case without `FHIRSCHEMA_` (`FHIRSCHEMA_GATEWAY_PORT` → `--gateway-port`). Secrets (a
`SecretStr` anywhere in the type) come only from the environment or from a file named like the
variable, in lower case, in `FHIRSCHEMA_SECRETS_DIR` (a mounted Kubernetes Secret, Docker
secrets): a secret in the config file or on the command line (visible to `ps`) is refused.

The entry point loads its service's `ServiceConfig` once (`load(argv)`); the file and the flags
then become this process's configuration layers, as the environment is, so every `Section()`
built later (also deep in a bootstrap) reads them too. Nothing is read at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

CONFIG_ENV = "FHIRSCHEMA_CONFIG"
SECRETS_DIR_ENV = "FHIRSCHEMA_SECRETS_DIR"
S = TypeVar("S", bound="Section")
log = logging.getLogger("fhirschema.config")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to change."""


@dataclass
class Layers:
    """This process's configuration beyond the environment: the file and the command-line flags."""

    file: Path | None = None
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)  # section -> field -> value


_layers = Layers()


def active() -> Layers:
    """The layers in force: those the entry point loaded, else `FHIRSCHEMA_CONFIG` if set."""
    if _layers.file is None and (env := os.environ.get(CONFIG_ENV)):
        return Layers(file=Path(env), flags=_layers.flags)
    return _layers


def use(layers: Layers) -> None:
    global _layers
    _layers = layers


def is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(is_secret(a) for a in typing.get_args(annotation))


class _Flags(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the section at once

    def __call__(self) -> dict[str, Any]:
        section = getattr(self.settings_cls, "section", "")
        return dict(active().flags.get(section, {}))


class _File(PydanticBaseSettingsSource):
    """The model's table of the config file; a secret there is an error, not a value."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = active().file
        section = getattr(self.settings_cls, "section", "")
        if path is None or not section:
            return {}
        values = read_file(path).get(section, {})
        if not isinstance(values, Mapping):
            raise ConfigError(f"{path}: [{section}] must be a table of settings, not {values!r}")
        prefix = str(self.settings_cls.model_config.get("env_prefix", "")).upper()
        for name, info in self.settings_cls.model_fields.items():
            if name in values and is_secret(info.annotation):
                raise ConfigError(
                    f"{path}: {section}.{name} is a secret and is not read from the config file: set "
                    f"{prefix}{name.upper()} in the environment, or put it in a file named "
                    f"{(prefix + name).lower()} in ${SECRETS_DIR_ENV}"
                )
        return dict(values)


def read_file(path: Path) -> dict[str, Any]:
    """The whole config file as tables (TOML by `.toml`, YAML by `.yaml`/`.yml`)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (--config / ${CONFIG_ENV})")
    suffix = path.suffix.lower()
    source: PydanticBaseSettingsSource
    try:
        if suffix == ".toml":
            source = TomlConfigSettingsSource(_Whole, toml_file=path)
        elif suffix in (".yaml", ".yml"):
            source = YamlConfigSettingsSource(_Whole, yaml_file=path)
        else:
            raise ConfigError(f"config file {path}: use .toml, .yaml or .yml")
        data = source()
    except ConfigError:
        raise
    except Exception as e:  # a syntax error: say where
        raise ConfigError(f"config file {path} cannot be read: {e}") from e
    return dict(data)


class _Whole(BaseSettings):
    """Stands in for a settings class to let pydantic-settings parse a whole file."""


class Section(BaseSettings):
    """One concern's settings (see the module docstring for the sources and their order).

    `reloadable`: the fields a running service applies on SIGHUP or a change of the config file
    (reload.py); a change of any other field is logged as needing a restart."""

    section: ClassVar[str] = ""
    reloadable: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secrets_dir = os.environ.get(SECRETS_DIR_ENV)
        secrets = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir) if secrets_dir else None
        sources = (init_settings, _Flags(settings_cls), env_settings, secrets, _File(settings_cls))
        return tuple(s for s in sources if s is not None)


def flag_name(model: type[Section], name: str) -> str:
    """`FHIRSCHEMA_GATEWAY_PORT` → `gateway-port`."""
    env = (str(model.model_config.get("env_prefix", "")) + name).lower()
    return env.removeprefix("fhirschema_").replace("_", "-")


def _flag_type(annotation: Any) -> Any:
    if annotation in (int, float, str):
        return annotation
    return str  # bools, lists, dicts: parsed by pydantic from the text, as from the environment


class ServiceConfig:
    """One service's configuration model: the sections it reads."""

    def __init__(
        self, service: str, *sections: type[Section], optional: Sequence[type[Section]] = ()
    ) -> None:
        """`optional`: sections the service runs without when their secrets are not given
        (it then says what it cannot do)."""
        self.service = service
        self.sections = sections
        self.optional = tuple(optional)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=f"python -m {self.service}",
            description=f"Run the {self.service}. Precedence: flags > environment > secret files > "
            f"config file > defaults (docs/configuration.md).",
        )
        parser.add_argument("--config", type=Path, help=f"TOML or YAML config file (also ${CONFIG_ENV})")
        for model in self.sections:
            group = parser.add_argument_group(f"[{model.section}]")
            for name, info in model.model_fields.items():
                if is_secret(info.annotation):
                    continue  # never on a command line
                group.add_argument(
                    f"--{flag_name(model, name)}", dest=f"{model.section}.{name}",
                    type=_flag_type(info.annotation), default=argparse.SUPPRESS,
                )  # fmt: skip
        return parser

    def load(self, argv: Sequence[str] | None = None) -> LoadedConfig:
        """Parse the command line, install the layers, and build every section once, so a bad
        setting stops the service at start with a message naming it."""
        args = vars(self.parser().parse_args(argv))
        file = args.pop("config", None)
        flags: dict[str, dict[str, Any]] = {}
        for key, value in args.items():
            section, name = key.split(".", 1)
            flags.setdefault(section, {})[name] = value
        layers = Layers(file=file or active().file, flags=flags)
        use(layers)
        return self.read(layers)

    def read(self, layers: Layers) -> LoadedConfig:
        if layers.file is not None:
            # One file may serve the whole stack: another service's tables are not an error.
            known = {m.section for m in self.sections}
            if other := sorted(set(read_file(layers.file)) - known):
                log.info("config file %s: [%s] not read by the %s (another service's, or a typo?)",
                         layers.file, "], [".join(other), self.service)  # fmt: skip
        built: dict[type[Section], Section] = {}
        for model in self.sections:
            try:
                built[model] = model()
            except ValidationError as e:
                if model in self.optional and all(err["type"] == "missing" for err in e.errors()):
                    continue
                raise ConfigError(
                    f"[{model.section}] settings of the {self.service}: {describe(model, e)}"
                ) from e
        return LoadedConfig(self, layers, built)


def describe(model: type[Section], error: ValidationError) -> str:
    """Each problem with the variable to set — never the value given (it may be a secret)."""
    prefix = str(model.model_config.get("env_prefix", "")).upper()
    parts = []
    for err in error.errors():
        name = ".".join(str(p) for p in err["loc"]) or "?"
        field = str(err["loc"][0]) if err["loc"] else ""
        variable = f"{prefix}{field.upper()}" if field in model.model_fields else "an unknown setting"
        parts.append(f"{model.section}.{name} ({variable}): {err['msg']}")
    return "; ".join(parts)


@dataclass
class LoadedConfig:
    config: ServiceConfig
    layers: Layers
    sections: dict[type[Section], Section]

    def get(self, model: type[S]) -> S:
        found = self.sections[model]
        assert isinstance(found, model)
        return found

    def maybe(self, model: type[S]) -> S | None:
        """An optional section, None when its secrets were not given."""
        found = self.sections.get(model)
        assert found is None or isinstance(found, model)
        return found
