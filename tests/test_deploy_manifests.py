"""Deployment manifests checked without a cluster or Docker (see k8s/check.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "k8s" / "check.py")
assert _spec and _spec.loader
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def _docs(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in check.load_k8s() if d["kind"] == kind}


def test_k8s_manifests_consistent() -> None:
    docs = check.load_k8s()
    assert check.check_k8s(docs) == []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for svc in ("storage", "ig-ingest", "converter", "validator", "gateway"):
        assert ("Deployment", svc) in kinds
    assert ("HorizontalPodAutoscaler", "gateway") in kinds
    assert {("ScaledObject", "validator"), ("ScaledObject", "converter")} <= kinds
    for svc in ("storage", "converter", "validator", "gateway"):
        assert ("PodDisruptionBudget", svc) in kinds
    assert ("NetworkPolicy", "default-deny") in kinds
    assert {("ServiceMonitor", "fhirschema-workers"), ("ServiceMonitor", "gateway")} <= kinds
    scaled = _docs("ScaledObject")
    assert (
        scaled["validator"]["spec"]["minReplicaCount"] >= 2
        and scaled["converter"]["spec"]["minReplicaCount"] >= 2
    )
    consumers = {
        t["metadata"]["consumer"]
        for t in scaled["validator"]["spec"]["triggers"]
        if "consumer" in t["metadata"]
    }
    assert consumers == {"validator-one", "validator-batch"}


def test_k8s_checker_catches_mistakes() -> None:
    docs = check.load_k8s()
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway":
            d["spec"]["template"]["metadata"]["labels"] = {"app": "gw"}
    errs = check.check_k8s(docs)
    assert any("Deployment/gateway: selector" in e for e in errs)
    assert any("Service/gateway" in e for e in errs)


def test_no_secret_value_in_a_manifest() -> None:
    """Secrets are the operator's (created from generated values); a manifest only refers to them."""
    docs = check.load_k8s()
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = "\n".join(p.read_text() for p in sorted((ROOT / "k8s").glob("*.yaml")))
    assert "change-me" not in text and "stringData" not in text
    refs = {
        ref["secretRef"]["name"]
        for d in docs if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"] for ref in c.get("envFrom", []) if "secretRef" in ref
    }  # fmt: skip
    assert refs == set(check.EXTERNAL_SECRETS)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fhirschema-s3", "namespace": "fhirschema"},
              "stringData": {"FHIRSCHEMA_S3_SECRET_KEY": "hunter2"}}  # fmt: skip
    broken = [*check.load_k8s(), secret]
    for d in broken:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "storage":
            d["spec"]["template"]["spec"]["containers"][0]["env"] = [
                {"name": "FHIRSCHEMA_REDIS_PASSWORD", "value": "hunter2"},
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "fhirschema-s3", "key": "OTHER"}}},
            ]
        if d["kind"] == "ConfigMap":
            d["data"]["FHIRSCHEMA_S3_SECRET_KEY"] = "hunter2"
    errs = check.check_k8s(broken)
    assert any("Secret/fhirschema-s3: values inlined" in e for e in errs), errs
    assert any("FHIRSCHEMA_REDIS_PASSWORD has a literal value" in e for e in errs), errs
    assert any("key OTHER is not one we document" in e for e in errs), errs
    assert any("ConfigMap/fhirschema-config: FHIRSCHEMA_S3_SECRET_KEY looks secret" in e for e in errs), errs


def test_production_checker_catches_mistakes() -> None:
    docs = check.load_k8s()
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] == "Deployment" and name == "validator":
            d["spec"]["replicas"] = 3
            c = d["spec"]["template"]["spec"]["containers"][0]
            del c["livenessProbe"], c["resources"]["limits"]
            c["readinessProbe"]["httpGet"]["port"] = "probes"
        if d["kind"] == "ScaledObject" and name == "converter":
            d["spec"]["triggers"][0]["metadata"]["consumer"] = "validator-one"
        if d["kind"] == "ServiceMonitor" and name == "gateway":
            d["spec"]["endpoints"][0]["port"] = "metrics"
        if d["kind"] == "PodDisruptionBudget" and name == "storage":
            d["spec"]["selector"] = {"matchLabels": {"app": "storag"}}
    docs = [d for d in docs if d["metadata"]["name"] != "default-deny"]
    errs = check.check_k8s(docs)
    expected = [
        "Deployment/validator: autoscaled, so it must not set replicas",
        "Deployment/validator: no limits for cpu, memory",
        "Deployment/validator: no livenessProbe",
        "Deployment/validator: readinessProbe on port probes, which the container does not declare",
        "ScaledObject/converter: consumer validator-one is not one converter reads",
        "ServiceMonitor/gateway: Service/gateway has no port metrics",
        "PodDisruptionBudget/storage: selects no pod",
        "Deployment/storage: runs several replicas without a PodDisruptionBudget",
        "NetworkPolicy: no default deny (podSelector {}, Ingress and Egress, no rule)",
    ]
    assert sorted(errs) == sorted(expected), errs


def test_custom_resources_validate_against_their_crds() -> None:
    """KEDA and Prometheus Operator objects: the Kubernetes schemas do not know them; their CRDs'
    models (cloudcoil-models-keda / -prometheus-operator) do, strictly (no unknown field)."""
    docs = check.load_k8s()
    assert {d["kind"] for d in check.custom_resources(docs)} == {"ScaledObject", "ServiceMonitor"}
    assert check.check_custom_resources(docs) == []
    so = next(d for d in docs if d["kind"] == "ScaledObject")
    so["spec"]["minReplicas"] = 2  # an HPA's field name, not KEDA's
    del so["spec"]["scaleTargetRef"]
    errs = check.check_custom_resources([so])
    assert len(errs) == 1 and "scaleTargetRef" in errs[0] and "Field required" in errs[0], errs
    so["spec"]["scaleTargetRef"] = {"name": "validator"}
    assert check.check_custom_resources([so]) == ["ScaledObject/validator: unknown field spec.minReplicas"]


def test_nats_values_make_a_three_node_jetstream_cluster() -> None:
    """k8s/nats-values.yaml, for the official NATS Helm chart (no helm here: its keys checked)."""
    values = yaml.safe_load((ROOT / "k8s" / "nats-values.yaml").read_text())
    cfg = values["config"]
    assert cfg["cluster"]["enabled"] is True and cfg["cluster"]["replicas"] == 3
    assert cfg["jetstream"]["enabled"] is True and cfg["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert cfg["monitor"]["enabled"] is True and cfg["monitor"]["port"] == 8222
    endpoints = {t["metadata"]["natsServerMonitoringEndpoint"] for so in _docs("ScaledObject").values()
                 for t in so["spec"]["triggers"] if t["type"] == "nats-jetstream"}  # fmt: skip
    assert endpoints == {"nats-headless.fhirschema.svc.cluster.local:8222"}
    assert values["podDisruptionBudget"]["enabled"] is True and values["promExporter"]["enabled"] is True


def test_compose_consistent() -> None:
    errs, missing = check.check_compose()
    assert errs == []
    # Dockerfiles of services owned elsewhere may not exist yet; ours must.
    assert set(missing) <= {"services/converter/Dockerfile", "services/validator/Dockerfile"}, missing


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Strict JSON-schema validation of every document (bundled schemas: no cluster, no network)."""
    import kubernetes_validate

    for doc in check.load_k8s():
        if doc not in check.custom_resources([doc]):
            kubernetes_validate.validate(doc, "1.31.0", strict=True)  # raises ValidationError with the path


def test_dockerfiles_consistent() -> None:
    paths = sorted((ROOT / "services").glob("*/Dockerfile"))
    assert {p.parent.name for p in paths} >= {"storage", "ig-ingest", "converter", "validator", "gateway"}
    assert check.check_dockerfiles() == []


def test_validator_image_compiles_in_a_builder_stage_only() -> None:
    """The wheel is built (and the validator compiled with mypyc) where gcc is; the runtime has neither."""
    builder, runtime = check.load_dockerfile(ROOT / "services" / "validator" / "Dockerfile")
    assert builder["name"] == "builder" and builder["image"] == runtime["image"] == "python:3.11-slim"

    def runs(stage: dict) -> str:
        return " && ".join(args for ins, args in stage["steps"] if ins == "RUN")

    def copied(stage: dict) -> set[str]:
        return {w for ins, args in stage["steps"] if ins == "COPY" for w in args.split()[:-1]}

    assert check.INSTALLS_COMPILER.search(runs(builder)) and "libc6-dev" in runs(builder)
    assert "rm -rf /var/lib/apt/lists" in runs(builder)
    assert "pip wheel --no-deps -w /wheels ." in runs(builder)
    assert not check.COMPILE_OFF.search(runs(builder))
    # setup.py compiles only when it can import the module list from scripts/build_engine.py.
    assert {"setup.py", "scripts/build_engine.py", "shared", "services"} <= copied(builder)

    assert "apt-get" not in runs(runtime) and "gcc" not in runs(runtime)
    assert "--from=builder" in copied(runtime) and "pip install /wheels/*.whl" in runs(runtime)
    final = dict(runtime["steps"])  # the last of each instruction
    assert final["USER"] == "fhirschema" and final["EXPOSE"] == "9100"
    assert final["CMD"] == '["python", "-m", "validator_service"]'


def test_services_that_never_validate_skip_the_compiler() -> None:
    for svc in ("storage", "ig-ingest", "converter", "gateway"):
        (stage,) = check.load_dockerfile(ROOT / "services" / svc / "Dockerfile")
        installs = [args for ins, args in stage["steps"] if ins == "RUN" and "pip install ." in args]
        assert installs and all(a.startswith("FHIRSCHEMA_COMPILE=0 pip install .") for a in installs), svc


def test_dockerfile_checker_catches_mistakes(tmp_path: Path) -> None:
    text = (ROOT / "services" / "validator" / "Dockerfile").read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        text.replace("gcc libc6-dev", "curl")
        .replace("--from=builder", "--from=build")
        .replace("COPY scripts/build_engine.py", "COPY scripts/build_the_engine.py")
        .replace("USER fhirschema", "USER root")
        .replace('CMD ["python", "-m", "validator_service"]', "CMD python -m validator_service")
    )
    errs = check.check_dockerfile(broken)
    assert any("builds from source without a C compiler" in e for e in errs), errs
    assert any("COPY --from=build names no earlier stage" in e for e in errs), errs
    assert any("COPY scripts/build_the_engine.py not in the build context" in e for e in errs), errs
    assert any("runs as root" in e for e in errs), errs
    assert any("exec-form CMD" in e for e in errs), errs
    assert len(errs) == 5, errs
