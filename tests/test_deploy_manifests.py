"""Deployment manifests checked without a cluster or Docker (see k8s/check.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "k8s" / "check.py")
assert _spec and _spec.loader
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def test_k8s_manifests_consistent() -> None:
    docs = check.load_k8s()
    assert check.check_k8s(docs) == []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for svc in ("storage", "ig-ingest", "converter", "validator", "gateway"):
        assert ("Deployment", svc) in kinds
    assert ("HorizontalPodAutoscaler", "validator") in kinds
    assert ("StatefulSet", "nats") in kinds
    replicas = {d["metadata"]["name"]: d["spec"].get("replicas") for d in docs if d["kind"] == "Deployment"}
    assert replicas["validator"] >= 2 and replicas["converter"] >= 2


def test_k8s_checker_catches_mistakes() -> None:
    docs = check.load_k8s()
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway":
            d["spec"]["template"]["metadata"]["labels"] = {"app": "gw"}
    errs = check.check_k8s(docs)
    assert any("Deployment/gateway: selector" in e for e in errs)
    assert any("Service/gateway" in e for e in errs)


def test_compose_consistent() -> None:
    errs, missing = check.check_compose()
    assert errs == []
    # Dockerfiles of services owned elsewhere may not exist yet; ours must.
    assert set(missing) <= {"services/converter/Dockerfile", "services/validator/Dockerfile"}, missing


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Strict JSON-schema validation of every document (bundled schemas: no cluster, no network)."""
    import kubernetes_validate

    for doc in check.load_k8s():
        kubernetes_validate.validate(doc, "1.31.0", strict=True)  # raises ValidationError with the path
