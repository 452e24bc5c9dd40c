"""Our Helm chart (deploy/helm/fhirschema), generated from the k8s/ manifests, and a renderer
for the template subset it uses — no helm binary can be had from the package registries here.

The chart's templates are the manifests with chosen fields replaced by values (VALUES below:
replicas, autoscaling bounds, resources, images, registries, packages, retention, auth, the NATS
monitoring endpoint) and optional groups behind an `if` (KEDA, ServiceMonitors, NetworkPolicies).
They use only `{{ .Values.x.y }}`, `{{ .Values.x.y | quote }}`, `{{- toYaml .Values.x | nindent
N }}`, `{{ .Release.Namespace }}`, `{{- if .Values.x }}` and `{{- end }}`, with Go-template
semantics, so helm renders them the same. Rendered with the default values, the chart is the
k8s/ manifests (less the Namespace, which `helm install --create-namespace` makes); tests hold
that, and validate every rendering strictly like the manifests.

    .venv/bin/python k8s/helm.py            # regenerate the templates and values.yaml
    .venv/bin/python k8s/helm.py --check    # fail when they are stale
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "fhirschema"
SERVICES = ("storage", "ig-ingest", "converter", "validator", "gateway")
AUTOSCALED = ("converter", "validator", "gateway")
# Documents behind a switch: kind -> values key.
OPTIONAL = {
    "ScaledObject": "keda.enabled",
    "ServiceMonitor": "serviceMonitor.enabled",
    "NetworkPolicy": "networkPolicy.enabled",
}
CONFIG_VALUES = {  # ConfigMap key -> values key (quoted strings)
    "FHIRSCHEMA_PACKAGE_SOURCES": "registries",
    "FHIRSCHEMA_PACKAGES": "packages",
    "FHIRSCHEMA_IG_KEEP_VERSIONS": "ingest.keepVersions",
    "FHIRSCHEMA_AUTH": "auth.mode",
    "FHIRSCHEMA_RATE_LIMIT": "auth.rateLimit",
}
EXTRA_CONFIG = {
    "FHIRSCHEMA_IG_KEEP_VERSIONS": "0",
    "FHIRSCHEMA_AUTH": "required",
    "FHIRSCHEMA_RATE_LIMIT": "600/minute",
}
_MARK = "__V__"


def _key(name: str) -> str:
    """A values key for a service: Go templates reach `.Values.services.igIngest`, not `ig-ingest`."""
    head, *rest = name.split("-")
    return head + "".join(p.capitalize() for p in rest)


def _mark(path: str, how: str = "") -> str:
    return f"{_MARK}{how}:{path}{_MARK}"


def _get(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def _set(values: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    node = values
    for part in head:
        node = node.setdefault(part, {})
    node[last] = value


def templatize(docs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, Any]]:
    """(template file name -> text, default values) from the manifests."""
    values: dict[str, Any] = {"image": {"registry": "ghcr.io/fhirschema", "tag": "0.1.0"}, "services": {}}
    files: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for source, doc in docs:
        if doc["kind"] == "Namespace":
            continue
        doc = copy.deepcopy(doc)
        kind, name = doc["kind"], doc["metadata"]["name"]
        doc["metadata"]["namespace"] = _mark("Release.Namespace", "raw")
        key = _key(name)
        if kind == "Deployment" and name in SERVICES:
            svc = values["services"].setdefault(key, {})
            spec = doc["spec"]
            if "replicas" in spec:
                svc["replicas"] = spec["replicas"]
                spec["replicas"] = _mark(f"Values.services.{key}.replicas", "raw")
            c = spec["template"]["spec"]["containers"][0]
            c["image"] = _mark(f"Values.image.registry }}}}/{name}:{{{{ .Values.image.tag", "raw")
            svc["resources"] = c["resources"]
            c["resources"] = _mark(f"Values.services.{key}.resources", "yaml")
        if kind in ("Deployment", "StatefulSet") and name in ("redis", "minio"):
            c = doc["spec"]["template"]["spec"]["containers"][0]
            values.setdefault(name, {})["resources"] = c["resources"]
            c["resources"] = _mark(f"Values.{name}.resources", "yaml")
        if kind == "StatefulSet" and name == "minio":
            req = doc["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
            values["minio"]["storage"] = req["storage"]
            req["storage"] = _mark("Values.minio.storage", "raw")
        if kind == "ConfigMap":
            data = doc["data"] = {
                **doc["data"],
                **{k: v for k, v in EXTRA_CONFIG.items() if k not in doc["data"]},
            }
            for key, path in CONFIG_VALUES.items():
                _set(values, path, data[key])
                data[key] = _mark(f"Values.{path}", "quote")
        if kind == "HorizontalPodAutoscaler":
            auto = values["services"][key].setdefault("autoscaling", {})
            for field in ("minReplicas", "maxReplicas"):
                auto[field] = doc["spec"][field]
                doc["spec"][field] = _mark(f"Values.services.{key}.autoscaling.{field}", "raw")
        if kind == "ScaledObject":
            auto = values["services"][key].setdefault("autoscaling", {})
            for field, bound in (("minReplicaCount", "minReplicas"), ("maxReplicaCount", "maxReplicas")):
                auto[bound] = doc["spec"][field]
                doc["spec"][field] = _mark(f"Values.services.{key}.autoscaling.{bound}", "raw")
            for t in doc["spec"]["triggers"]:
                if t["type"] == "nats-jetstream":
                    values.setdefault("nats", {})["monitoringEndpoint"] = t["metadata"][
                        "natsServerMonitoringEndpoint"
                    ]
                    t["metadata"]["natsServerMonitoringEndpoint"] = _mark(
                        "Values.nats.monitoringEndpoint", "quote"
                    )
        if kind in OPTIONAL:
            _set(values, OPTIONAL[kind], True)
        files.setdefault(source, []).append((kind, doc))
    return {name: _template(entries) for name, entries in files.items()}, values


def _template(entries: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for kind, doc in entries:
        text = yaml.safe_dump(doc, sort_keys=False, width=1000)
        text = re.sub(rf"^( *)([^\n]*?)'?{_MARK}yaml:([\w.]+){_MARK}'?$",
                      lambda m: f"{m[1]}{m[2]}" + "{{- toYaml ." + m[3] + " | nindent " + str(len(m[1]) + 2) + " }}",
                      text, flags=re.M)  # fmt: skip
        text = re.sub(rf"'?{_MARK}quote:([\w.]+){_MARK}'?", lambda m: "{{ ." + m[1] + " | quote }}", text)
        text = re.sub(rf"'?{_MARK}raw:(.+?){_MARK}'?", lambda m: "{{ ." + m[1] + " }}", text)
        if kind in OPTIONAL:
            text = "{{- if .Values." + OPTIONAL[kind] + " }}\n" + text + "{{- end }}\n"
        parts.append(text)
    return "---\n".join(parts)


# --- rendering (the template subset above, with Go-template whitespace semantics) -------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_WS = " \t\r\n"


def _eval(expr: str, values: dict[str, Any], namespace: str) -> Any:
    pipeline = [p.strip() for p in expr.split("|")]
    head, *pipes = pipeline
    if head.startswith("toYaml "):
        value: Any = _lookup(head.removeprefix("toYaml ").strip(), values, namespace)
        value = yaml.safe_dump(value, sort_keys=False, width=1000).rstrip("\n")
    else:
        value = _lookup(head, values, namespace)
    for pipe in pipes:
        if pipe == "quote":
            value = json.dumps(str(value))
        elif m := re.fullmatch(r"nindent (\d+)", pipe):
            pad = " " * int(m[1])
            value = "\n" + "\n".join(pad + line if line else line for line in str(value).split("\n"))
        else:
            raise ValueError(f"unsupported pipe {pipe!r}")
    return value


def _lookup(ref: str, values: dict[str, Any], namespace: str) -> Any:
    if ref == ".Release.Namespace":
        return namespace
    if not ref.startswith(".Values."):
        raise ValueError(f"unsupported reference {ref!r}")
    return _get(values, ref.removeprefix(".Values."))


def render_text(text: str, values: dict[str, Any], namespace: str) -> str:
    """`{{-` drops the whitespace before the action, `-}}` the whitespace after (Go's rule)."""
    out: list[str] = []
    skipping: list[bool] = []
    pos = 0
    for m in _ACTION.finditer(text):
        trim_left, expr, trim_right = m.groups()
        literal = text[pos : m.start()]
        if trim_left:
            literal = literal.rstrip(_WS)
        if not any(skipping):
            out.append(literal)
        pos = m.end()
        if trim_right:
            while pos < len(text) and text[pos] in _WS:
                pos += 1
        if expr.startswith("if "):
            skipping.append(not _truthy(_lookup(expr[3:].strip(), values, namespace)))
        elif expr == "end":
            skipping.pop()
        elif not any(skipping):
            value = _eval(expr, values, namespace)
            out.append(str(value).lower() if isinstance(value, bool) else str(value))
    if not any(skipping):
        out.append(text[pos:])
    return "".join(out)


def _truthy(value: Any) -> bool:
    return bool(value) and value != "false"


def load_chart(chart: Path = CHART) -> tuple[dict[str, str], dict[str, Any]]:
    templates = {p.name: p.read_text() for p in sorted((chart / "templates").glob("*.yaml"))}
    return templates, yaml.safe_load((chart / "values.yaml").read_text())


def render(
    overrides: dict[str, Any] | None = None, namespace: str = "fhirschema", chart: Path = CHART
) -> list[dict[str, Any]]:
    templates, values = load_chart(chart)
    merged = _merge(values, overrides or {})
    docs = []
    for text in templates.values():
        docs += [d for d in yaml.safe_load_all(render_text(text, merged, namespace)) if d]
    return docs


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def generate() -> dict[Path, str]:
    docs = []
    for f in sorted((ROOT / "k8s").glob("[0-9]*.yaml")):
        docs += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    templates, values = templatize(docs)
    header = "# Generated from k8s/*.yaml by k8s/helm.py: edit the manifests, then regenerate.\n"
    out = {CHART / "templates" / name: header + text for name, text in templates.items()}
    values_doc = (
        "# Defaults: the k8s/ manifests. Secrets are not values: scripts/generate_secrets.py k8s.\n"
        "# Generated by k8s/helm.py (the keys); change a default in k8s/*.yaml and regenerate.\n"
    )
    out[CHART / "values.yaml"] = values_doc + yaml.safe_dump(values, sort_keys=False, width=1000)
    return out


def main(argv: list[str]) -> int:
    stale = [p for p, text in generate().items() if not p.is_file() or p.read_text() != text]
    if "--check" in argv:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (regenerate: .venv/bin/python k8s/helm.py)")
        return 1 if stale else 0
    for p, text in generate().items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    print(f"wrote {len(stale)} file(s) in {CHART.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
