"""What a production deployment needs, checked offline on the parsed manifests (k8s/check.py).

- no secret value in a manifest: no Secret object with data, no literal env value or ConfigMap
  entry under a secret-looking name; every referenced Secret and key is one the operator creates
  (EXTERNAL_SECRETS, documented in k8s/00-base.yaml and docs/operations.md);
- every container has CPU and memory requests and limits, readiness and liveness probes on a
  declared port;
- an autoscaled Deployment has no `replicas` (an apply would reset the autoscaler's count), and
  every Deployment of our services that runs 2+ replicas has a PodDisruptionBudget;
- KEDA ScaledObjects target a Deployment and scale on the lag of that service's own durable
  consumers (names from fhirschema_bus.subjects / topology); ServiceMonitors select a Service
  port; NetworkPolicies start from a default deny and each selects some pod;
- KEDA and Prometheus Operator objects are validated against their CRDs' models
  (cloudcoil-models-*, generated from the published CRDs): no missing field, no unknown one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Secrets the operator creates (never in the manifests): name -> keys the workloads read.
# scripts/k8s_secrets.py generates exactly these (a test holds them together).
EXTERNAL_SECRETS: dict[str, set[str]] = {
    "fhirschema-s3": {"FHIRSCHEMA_S3_ACCESS_KEY", "FHIRSCHEMA_S3_SECRET_KEY"},
    "fhirschema-redis": {"FHIRSCHEMA_REDIS_PASSWORD"},
    **{
        f"fhirschema-nats-{svc}": {"FHIRSCHEMA_NATS_USER", "FHIRSCHEMA_NATS_PASSWORD"}
        for svc in ("gateway", "validator", "converter", "storage", "ig-ingest")
    },
}
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL|NKEY|SEED)", re.I)
# Pods the NATS Helm release `nats` creates (k8s/nats-values.yaml).
NATS_POD_LABELS = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"}
# The durable consumers each KEDA-scaled service reads (a trigger on another's lag is a mistake).
SERVICE_DURABLES = {
    "validator": {"validator-one", "validator-batch"},
    "converter": {"converter"},
    "ig-ingest": {"ig-ingest"},
    "storage": {"storage"},
}
NATS_TRIGGER_KEYS = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}


def _by_kind(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d.get("kind", ""), {})[(d.get("metadata") or {}).get("name", "")] = d
    return out


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels + In/NotIn/Exists expressions, or a Service's plain map)."""
    plain = {k: v for k, v in selector.items() if k not in ("matchLabels", "matchExpressions")}
    if any(labels.get(k) != v for k, v in {**plain, **selector.get("matchLabels", {})}.items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, op = labels.get(e["key"]), e["operator"]
        if (op == "In" and value not in e["values"]) or (op == "NotIn" and value in e.get("values", [])):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def pod_labels(docs: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    found = [
        d["spec"]["template"]["metadata"].get("labels", {})
        for d in docs
        if d.get("kind") in ("Deployment", "StatefulSet")
    ]
    return [*found, NATS_POD_LABELS]


def check_secrets(docs: list[dict[str, Any]]) -> list[str]:
    errs = []
    for d in docs:
        kind, name = d.get("kind"), d["metadata"]["name"]
        if kind == "Secret" and (d.get("data") or d.get("stringData")):
            errs.append(f"Secret/{name}: values inlined in a manifest (the operator creates it)")
        if kind == "ConfigMap":
            errs += [f"ConfigMap/{name}: {k} looks secret" for k in d.get("data", {}) if SECRETISH.search(k)]
        if kind not in ("Deployment", "StatefulSet"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                if "value" in env and SECRETISH.search(env["name"]):
                    errs.append(f"{kind}/{name}: env {env['name']} has a literal value (use a secretKeyRef)")
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in EXTERNAL_SECRETS.get(ref["name"], set()):
                    errs.append(
                        f"{kind}/{name}: Secret {ref['name']} key {ref['key']} is not one we document"
                    )
            for ref in c.get("envFrom", []):
                if "secretRef" in ref and ref["secretRef"]["name"] not in EXTERNAL_SECRETS:
                    errs.append(f"{kind}/{name}: Secret {ref['secretRef']['name']} is not one we document")
    return errs


def check_containers(docs: list[dict[str, Any]]) -> list[str]:
    errs = []
    for d in docs:
        if d.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        where = f"{d['kind']}/{d['metadata']['name']}"
        for c in d["spec"]["template"]["spec"]["containers"]:
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                if missing:
                    errs.append(f"{where}: no {part} for {', '.join(sorted(missing))}")
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    errs.append(f"{where}: no {probe}")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket")
                if action and action["port"] not in ports:
                    errs.append(
                        f"{where}: {probe} on port {action['port']}, which the container does not declare"
                    )
    return errs


def check_scaling(docs: list[dict[str, Any]]) -> list[str]:
    errs, kinds = [], _by_kind(docs)
    deployments = kinds.get("Deployment", {})
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in kinds.get("HorizontalPodAutoscaler", {}).values()}
    for name, so in kinds.get("ScaledObject", {}).items():
        target = so["spec"]["scaleTargetRef"]["name"]
        scaled.add(target)
        if target not in deployments:
            errs.append(f"ScaledObject/{name}: target Deployment {target} not defined")
        if so["spec"].get("minReplicaCount", 0) > so["spec"].get("maxReplicaCount", 100):
            errs.append(f"ScaledObject/{name}: minReplicaCount > maxReplicaCount")
        for t in so["spec"]["triggers"]:
            if t["type"] != "nats-jetstream":
                continue
            meta = t.get("metadata", {})
            if missing := NATS_TRIGGER_KEYS - set(meta):
                errs.append(f"ScaledObject/{name}: nats-jetstream trigger lacks {sorted(missing)}")
                continue
            if meta["consumer"] not in SERVICE_DURABLES.get(target, set()):
                errs.append(f"ScaledObject/{name}: consumer {meta['consumer']} is not one {target} reads")
            if meta["stream"] != durable_streams().get(meta["consumer"]):
                errs.append(
                    f"ScaledObject/{name}: consumer {meta['consumer']} is not on stream {meta['stream']}"
                )
            if not str(meta["lagThreshold"]).isdigit():
                errs.append(f"ScaledObject/{name}: lagThreshold must be a whole number")
    for name in scaled & set(deployments):
        if "replicas" in deployments[name]["spec"]:
            errs.append(f"Deployment/{name}: autoscaled, so it must not set replicas")
    pdb_selectors = [p["spec"]["selector"] for p in kinds.get("PodDisruptionBudget", {}).values()]
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/part-of") != "fhirschema":
            continue
        if (name in scaled or dep["spec"].get("replicas", 1) > 1) and not any(
            _matches(s, labels) for s in pdb_selectors
        ):
            errs.append(f"Deployment/{name}: runs several replicas without a PodDisruptionBudget")
    for name, pdb in kinds.get("PodDisruptionBudget", {}).items():
        if not any(_matches(pdb["spec"]["selector"], lbl) for lbl in pod_labels(docs)):
            errs.append(f"PodDisruptionBudget/{name}: selects no pod")
    return errs


def durable_streams() -> dict[str, str]:
    """Durable consumer -> its stream, from the topology every service creates (topology.py)."""
    from fhirschema_bus.topology import DURABLES, STREAMS

    def covers(pattern: str, subject: str) -> bool:
        p, t = pattern.split("."), subject.split(".")
        if p[-1] == ">":
            return len(t) >= len(p) and all(a in ("*", b) for a, b in zip(p[:-1], t, strict=False))
        return len(p) == len(t) and all(a in ("*", b) for a, b in zip(p, t, strict=True))

    return {
        d.name: str(stream.name)
        for d in DURABLES
        for stream in STREAMS
        if any(covers(pattern, d.subject.replace(">", "x")) for pattern in stream.subjects or [])
    }


def check_monitoring(docs: list[dict[str, Any]]) -> list[str]:
    errs, kinds = [], _by_kind(docs)
    services = list(kinds.get("Service", {}).values())
    for name, sm in kinds.get("ServiceMonitor", {}).items():
        chosen = [s for s in services if _matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not chosen:
            errs.append(f"ServiceMonitor/{name}: selects no Service")
        for ep in sm["spec"]["endpoints"]:
            for svc in chosen:
                if ep["port"] not in {p.get("name") for p in svc["spec"]["ports"]}:
                    errs.append(
                        f"ServiceMonitor/{name}: Service/{svc['metadata']['name']} has no port {ep['port']}"
                    )
    for name, dep in kinds.get("Deployment", {}).items():
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/part-of") != "fhirschema":
            continue
        monitored = [
            s for s in services
            if _matches(s["spec"].get("selector", {}), labels)
            and any(_matches(m["spec"]["selector"], s["metadata"].get("labels", {}))
                    for m in kinds.get("ServiceMonitor", {}).values())
        ]  # fmt: skip
        if not monitored:
            errs.append(f"Deployment/{name}: no ServiceMonitor scrapes its metrics")
    policies = kinds.get("NetworkPolicy", {})
    if not any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") and not p["spec"].get("egress")
               and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} for p in policies.values()):  # fmt: skip
        errs.append("NetworkPolicy: no default deny (podSelector {}, Ingress and Egress, no rule)")
    for name, pol in policies.items():
        if not any(_matches(pol["spec"]["podSelector"], lbl) for lbl in pod_labels(docs)):
            errs.append(f"NetworkPolicy/{name}: selects no pod")
    return errs


def check_production(docs: list[dict[str, Any]]) -> list[str]:
    return [*check_secrets(docs), *check_containers(docs), *check_scaling(docs), *check_monitoring(docs)]


CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "cloudcoil.models.prometheus_operator.v1",
        "ServiceMonitor",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("cloudcoil.models.prometheus_operator.v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "cloudcoil.models.prometheus_operator.v1",
        "PrometheusRule",
    ),
}


def validate_custom_resource(doc: dict[str, Any]) -> list[str]:
    """Strict validation of a KEDA / Prometheus Operator object against its CRD's model: the
    models ignore unknown fields, so what they dump back must be the whole document."""
    import importlib

    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key not in CRD_MODELS:
        return [f"{key[1]}: no CRD model for {key[0]}"]
    module, cls = CRD_MODELS[key]
    model = getattr(importlib.import_module(module), cls)
    where = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
    try:
        parsed = model.model_validate(doc)
    except Exception as e:  # pydantic's ValidationError: the paths and what is wrong
        return [f"{where}: {e}"]
    back = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{where}: unknown field {path}" for path in _dropped(doc, back)]


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    if isinstance(given, dict):
        kept = kept if isinstance(kept, dict) else {}
        return [p for k, v in given.items() for p in
                (_dropped(v, kept[k], f"{path}.{k}") if k in kept else [f"{path}.{k}".lstrip(".")])]  # fmt: skip
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (a, b) in enumerate(zip(given, kept, strict=False))
            for p in _dropped(a, b, f"{path}[{i}]")
        ]
    return []
