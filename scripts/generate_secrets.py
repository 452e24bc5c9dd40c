"""Generate every secret the deployments refer to, with fresh random values: nothing secret is
ever committed, in an image or in a manifest.

    .venv/bin/python scripts/generate_secrets.py k8s | kubectl apply -f -     # Kubernetes Secrets
    .venv/bin/python scripts/generate_secrets.py compose                        # deploy/secrets/ files
    ... k8s --only nats | kubectl apply -f -                                    # rotate one group

What there is:
- S3: the access key and secret (MinIO's root user, every service's client);
- Redis: its password (the gateway and storage; Redis itself requires it);
- NATS: each service's user and password, and `auth.conf`, the NATS users with their subject
  permissions (fhirschema_bus/nats_permissions.py) that the NATS server includes.

Kubernetes: Secrets fhirschema-s3, fhirschema-redis, fhirschema-nats-<service>, nats-auth
(k8s/production.py EXTERNAL_SECRETS; k8s/nats-values.yaml mounts nats-auth). Compose: one file
per secret in deploy/secrets/ (a 0700 folder, git-ignored), named as the services read secret files
(FHIRSCHEMA_SECRETS_DIR: the variable's name in lower case); docker-compose.yml mounts them.
An existing compose file is kept (the stack's data was made with it) unless --rotate.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fhirschema_bus import nats_permissions as perms

NAMESPACE = "fhirschema"
GROUPS = ("s3", "redis", "nats", "grafana")  # grafana: compose only (its admin password)
COMPOSE_DIR = Path(__file__).resolve().parent.parent / "deploy" / "secrets"


def values(
    only: tuple[str, ...] = GROUPS, token: Callable[[int], str] = secrets.token_urlsafe
) -> dict[str, Any]:
    """{group: values}: s3 {access_key, secret_key}, redis {password}, nats {user: password}."""
    out: dict[str, Any] = {}
    if "s3" in only:
        out["s3"] = {"access_key": "fhirschema", "secret_key": token(32)}
    if "redis" in only:
        out["redis"] = {"password": token(32)}
    if "nats" in only:
        out["nats"] = {user: token(32) for user in (*perms.SERVICES, perms.ADMIN)}
    if "grafana" in only:
        out["grafana"] = {"admin_password": token(24)}
    return out


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": NAMESPACE,
        "annotations": {"fhirschema.io/generated": "scripts/generate_secrets.py"},
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": data}


def k8s(v: dict[str, Any]) -> list[dict[str, Any]]:
    docs = []
    if "s3" in v:
        docs.append(_secret("fhirschema-s3", {"FHIRSCHEMA_S3_ACCESS_KEY": v["s3"]["access_key"],
                                              "FHIRSCHEMA_S3_SECRET_KEY": v["s3"]["secret_key"]}))  # fmt: skip
    if "redis" in v:
        docs.append(_secret("fhirschema-redis", {"FHIRSCHEMA_REDIS_PASSWORD": v["redis"]["password"]}))
    if "nats" in v:
        for svc in perms.SERVICES:
            creds = {"FHIRSCHEMA_NATS_USER": svc, "FHIRSCHEMA_NATS_PASSWORD": v["nats"][svc]}
            docs.append(_secret(f"fhirschema-nats-{svc}", creds))
        docs.append(_secret("nats-auth", {"auth.conf": perms.config(v["nats"])}))
    return docs


def compose_files(v: dict[str, Any]) -> dict[str, str]:
    """File name in deploy/secrets/ -> content."""
    files: dict[str, str] = {}
    if "s3" in v:
        files["fhirschema_s3_access_key"] = v["s3"]["access_key"]
        files["fhirschema_s3_secret_key"] = v["s3"]["secret_key"]
    if "redis" in v:
        files["fhirschema_redis_password"] = v["redis"]["password"]
    if "nats" in v:
        files |= {f"nats_password_{svc}": v["nats"][svc] for svc in (*perms.SERVICES, perms.ADMIN)}
        files["nats-auth.conf"] = perms.config(v["nats"])
    if "grafana" in v:
        files["grafana_admin_password"] = v["grafana"]["admin_password"]
    return files


def write_compose(directory: Path, v: dict[str, Any], rotate: bool = False) -> list[str]:
    # The folder is the owner's alone (0700); the files are 0644 because compose bind-mounts each
    # file as it is and the services run as their own users (10001, nats, redis, minio).
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    for name, text in compose_files(v).items():
        path = directory / name
        if path.exists() and not rotate:
            continue
        path.write_text(text)
        path.chmod(0o644)
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("target", choices=("k8s", "compose"))
    parser.add_argument("--only", choices=GROUPS, action="append", help="only these secrets (repeatable)")
    parser.add_argument("--dir", type=Path, default=COMPOSE_DIR, help="compose: where the files go")
    parser.add_argument("--rotate", action="store_true", help="compose: replace existing files")
    args = parser.parse_args(argv)
    v = values(tuple(args.only or GROUPS))
    if args.target == "k8s":
        sys.stdout.write(yaml.safe_dump_all(k8s(v), sort_keys=False))
    else:
        written = write_compose(args.dir, v, args.rotate)
        print(f"{args.dir}: wrote {', '.join(written) or 'nothing (all exist; --rotate replaces them)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
