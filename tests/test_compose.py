"""docker-compose.yml checked offline: the Compose Specification's schema, secrets generated
(never inline), mounts, Prometheus targets, and the generator's files for it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "k8s"))
sys.path.insert(0, str(ROOT / "scripts"))
import compose_check  # noqa: E402  (k8s/compose_check.py)

_spec = importlib.util.spec_from_file_location("generate_secrets", ROOT / "scripts" / "generate_secrets.py")
assert _spec and _spec.loader
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)
GENERATED = set(gen.compose_files(gen.values()))


def test_compose_is_valid_and_consistent() -> None:
    doc = compose_check.load()
    assert compose_check.check(doc, GENERATED) == []
    services = doc["services"]
    assert {"prometheus", "grafana", "otel-collector", "nats-exporter"} <= set(services)
    assert services["otel-collector"]["profiles"] == ["tracing"]
    assert all("profiles" not in svc for name, svc in services.items() if name != "otel-collector")
    for svc in ("storage", "ig-ingest", "converter", "validator", "gateway"):
        env = services[svc]["environment"]
        assert env["FHIRSCHEMA_NATS_USER"] == svc and env["FHIRSCHEMA_SECRETS_DIR"] == "/run/secrets"
        targets = {s["target"] for s in services[svc]["secrets"] if isinstance(s, dict)}
        assert targets == {"fhirschema_nats_password"}  # the file name NatsSettings.password reads
    text = (ROOT / "docker-compose.yml").read_text()
    assert "fhirschema-secret" not in text and "change-me" not in text


def test_compose_checker_catches_mistakes() -> None:
    doc = compose_check.load()
    doc["services"]["gateway"]["environment"]["FHIRSCHEMA_S3_SECRET_KEY"] = "hunter2"
    doc["services"]["gateway"]["secrets"].append("undefined_secret")
    doc["services"]["grafana"]["volumes"].append("./deploy/nowhere:/x:ro")
    doc["services"]["storage"]["restart"] = "sometimes"  # not in the spec's enum? a string: fine
    doc["services"]["storage"]["healthcheck"]["retries"] = "six"  # the schema wants a number
    doc["secrets"]["inline"] = {"file": "./secrets.txt"}
    errs = compose_check.check(doc, GENERATED)
    assert any("FHIRSCHEMA_S3_SECRET_KEY has a literal value" in e for e in errs), errs
    assert any("secret undefined_secret not defined" in e for e in errs), errs
    assert any("mounts ./deploy/nowhere" in e for e in errs), errs
    assert any("healthcheck/retries" in e for e in errs), errs
    assert any("compose secret inline" in e for e in errs), errs


def test_generated_compose_secrets(tmp_path: Path) -> None:
    written = gen.write_compose(tmp_path, gen.values())
    assert set(written) == GENERATED and (tmp_path.stat().st_mode & 0o777) == 0o700
    conf = (tmp_path / "nats-auth.conf").read_text()
    for svc in ("gateway", "validator", "converter", "storage", "ig-ingest"):
        assert (tmp_path / f"nats_password_{svc}").read_text() in conf
    again = gen.write_compose(tmp_path, gen.values())
    assert again == []  # kept: the running stack's data was made with them
    assert set(gen.write_compose(tmp_path, gen.values(), rotate=True)) == GENERATED


def test_generated_k8s_secrets_are_the_ones_the_manifests_use() -> None:
    import kubernetes_validate
    from production import EXTERNAL_SECRETS

    docs = gen.k8s(gen.values())
    for d in docs:
        kubernetes_validate.validate(d, "1.31.0", strict=True)
    made = {d["metadata"]["name"]: set(d["stringData"]) for d in docs}
    assert made.pop("nats-auth") == {"auth.conf"}  # for the NATS chart (k8s/nats-values.yaml)
    assert made == EXTERNAL_SECRETS
    assert gen.k8s(gen.values()) != docs  # fresh values every time
    values = yaml.safe_load((ROOT / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["merge"]["$include"] == "../nats-auth/auth.conf"
    volumes = [p["value"] for p in values["podTemplate"]["patch"]]
    assert {"name": "nats-auth", "secret": {"secretName": "nats-auth"}} in volumes
