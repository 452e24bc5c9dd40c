"""Our Helm chart (deploy/helm/fhirschema, k8s/helm.py): generated from the manifests, rendered
offline by the template subset it uses, every rendering validated strictly like the manifests."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "k8s"))
_spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "k8s" / "check.py")
assert _spec and _spec.loader
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)
import helm  # noqa: E402  (k8s/helm.py)


def _strict(docs: list[dict]) -> None:
    assert check.check_k8s(docs) == []
    for doc in docs:
        if doc in check.custom_resources([doc]):
            assert check.check_custom_resources([doc]) == []
        else:
            kubernetes_validate.validate(doc, "1.31.0", strict=True)


def test_chart_is_generated_from_the_manifests() -> None:
    assert helm.main(["--check"]) == 0, "regenerate: .venv/bin/python k8s/helm.py"
    chart = yaml.safe_load((helm.CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "fhirschema"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])


def test_default_values_render_the_manifests() -> None:
    rendered = helm.render()
    assert rendered == [d for d in check.load_k8s() if d["kind"] != "Namespace"]
    _strict(rendered)


def test_values_reach_the_manifests() -> None:
    overrides = {
        "image": {"registry": "registry.example.org/fhir", "tag": "1.2.3"},
        "services": {
            "storage": {"replicas": 3, "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                      "limits": {"cpu": "2", "memory": "4Gi"}}},
            "validator": {"autoscaling": {"minReplicas": 4, "maxReplicas": 40}},
            "gateway": {"autoscaling": {"minReplicas": 3, "maxReplicas": 6}},
        },
        "registries": "npm+https://npm.example.org,/mnt/packages",
        "packages": "hl7.fhir.r4.core#4.0.1,hl7.fhir.us.core#6.1.0",
        "ingest": {"keepVersions": 3},
        "auth": {"mode": "off", "rateLimit": "100/minute"},
        "minio": {"storage": "200Gi"},
        "keda": {"enabled": False},
        "networkPolicy": {"enabled": False},
    }  # fmt: skip
    docs = helm.render(overrides, namespace="fhir-prod")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert {d["metadata"]["namespace"] for d in docs} == {"fhir-prod"}
    storage = by[("Deployment", "storage")]["spec"]
    assert storage["replicas"] == 3
    c = storage["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.org/fhir/storage:1.2.3"
    assert c["resources"]["limits"]["memory"] == "4Gi"
    data = by[("ConfigMap", "fhirschema-config")]["data"]
    assert data["FHIRSCHEMA_PACKAGE_SOURCES"] == "npm+https://npm.example.org,/mnt/packages"
    assert data["FHIRSCHEMA_PACKAGES"].endswith("us.core#6.1.0")
    assert (data["FHIRSCHEMA_IG_KEEP_VERSIONS"], data["FHIRSCHEMA_AUTH"], data["FHIRSCHEMA_RATE_LIMIT"]) == (
        "3", "off", "100/minute")  # fmt: skip
    hpa = by[("HorizontalPodAutoscaler", "gateway")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert not [d for d in docs if d["kind"] in ("ScaledObject", "NetworkPolicy")]
    assert by[("StatefulSet", "minio")]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"][
        "requests"
    ] == {"storage": "200Gi"}
    for d in docs:  # strict schemas; the namespace check is the manifests' (fhirschema) only
        if d not in check.custom_resources([d]):
            kubernetes_validate.validate(d, "1.31.0", strict=True)
    keda = helm.render({"services": {"validator": {"autoscaling": {"minReplicas": 4, "maxReplicas": 40}}}})
    so = next(d for d in keda if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "validator")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (4, 40)
    _strict(keda)


def test_the_renderer_follows_go_template_whitespace() -> None:
    values = {"a": {"b": "x y", "n": 3, "on": True, "off": False, "m": {"k": "v", "l": [1, 2]}}}
    text = "q: {{ .Values.a.b | quote }}\nn: {{ .Values.a.n }}\nm: {{- toYaml .Values.a.m | nindent 2 }}\n"
    text += "{{- if .Values.a.off }}\nhidden: 1\n{{- end }}\n{{- if .Values.a.on }}\nshown: 1\n{{- end }}\n"
    text += "ns: {{ .Release.Namespace }}\n"
    out = helm.render_text(text, values, "space")
    assert out == 'q: "x y"\nn: 3\nm:\n  k: v\n  l:\n  - 1\n  - 2\nshown: 1\nns: space\n', out
    assert yaml.safe_load(out)["m"] == {"k": "v", "l": [1, 2]}
