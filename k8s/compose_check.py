"""docker-compose.yml beyond what k8s/check.py looks at: the Compose Specification's JSON schema
(deploy/schemas/compose-spec.json, vendored), secrets (files the generator writes, none inline),
bind-mounted files that exist, and Prometheus scraping services that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_SECRETS = {"api_keys"}  # the gateway's API key digests (docs/security.md): issued by the operator
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL)", re.I)


def load(path: Path = ROOT / "docker-compose.yml") -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = json.loads((ROOT / "deploy" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"compose {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def _secret_names(refs: list[Any]) -> list[str]:
    return [r if isinstance(r, str) else r["source"] for r in refs]


def check(doc: dict[str, Any], generated: set[str]) -> list[str]:
    """`generated`: the file names scripts/generate_secrets.py writes into deploy/secrets/."""
    errs = schema_errors(doc)
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    defined: dict[str, dict[str, Any]] = doc.get("secrets", {})
    for name, spec in defined.items():
        if name in OPERATOR_SECRETS:
            continue
        path = Path(spec.get("file", ""))
        if path.parent != Path("deploy/secrets") or path.name not in generated:
            errs.append(f"compose secret {name}: {spec} is not a file scripts/generate_secrets.py writes")
    for name, svc in services.items():
        for ref in _secret_names(svc.get("secrets", [])):
            if ref not in defined:
                errs.append(f"compose {name}: secret {ref} not defined")
        env = svc.get("environment") or {}
        for key, value in env.items() if isinstance(env, dict) else []:
            if (
                SECRETISH.search(key)
                and not key.endswith(("__FILE", "_FILE", "_DIR"))
                and value not in (None, "")
                and "${" not in str(value)
            ):
                errs.append(f"compose {name}: {key} has a literal value (use a secret file)")
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith(".") and not (ROOT / source).exists():
                errs.append(f"compose {name}: mounts {source}, which does not exist")
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        hosts = [t.split(":")[0] for c in job.get("static_configs", []) for t in c["targets"]]
        hosts += [n for c in job.get("dns_sd_configs", []) for n in c["names"]]
        errs += [
            f"prometheus job {job['job_name']}: {h} is no compose service" for h in hosts if h not in services
        ]
    return errs
