"""Offline checks of the deployment manifests (no cluster, no Docker): `python k8s/check.py`.

Kubernetes: every document parses, has apiVersion/kind/metadata.name/namespace, Deployment and
StatefulSet selectors match their pod labels and pin their images, every Service selects some
workload, env refs (ConfigMap/Secret) exist or are Secrets the operator creates, the HPA targets an
existing Deployment; what production needs (k8s/production.py: no inlined secret, requests,
limits and probes, PDBs, KEDA triggers on the service's own consumers, ServiceMonitors,
NetworkPolicies) and KEDA / Prometheus Operator objects against their CRDs' models. Compose: every service has an
image or a build whose Dockerfile exists, depends_on names defined services, and host names in
the environment URLs are services. Dockerfiles (services/*/Dockerfile): what COPY takes from the
context exists, COPY --from names an earlier stage, the last stage runs as a non-root USER with an
exec-form CMD, and a stage that builds the package from source either installs a C compiler (the
validator is compiled with mypyc: setup.py) or turns compiling off with FHIRSCHEMA_COMPILE=0.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "k8s", ROOT / "shared"):  # production.py; fhirschema_bus (subject names)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from production import EXTERNAL_SECRETS, check_production, validate_custom_resource  # noqa: E402

CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}
WORKLOADS = {"Deployment", "StatefulSet"}


def load_k8s(root: Path = ROOT / "k8s") -> list[dict[str, Any]]:
    """The manifests `kubectl apply -f k8s/` would apply would be every *.yaml; the numbered files
    are the manifests (nats-values.yaml is the NATS Helm chart's values, not a manifest)."""
    docs = []
    for f in sorted(root.glob("[0-9]*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def check_k8s(docs: list[dict[str, Any]]) -> list[str]:
    errs: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        kind, meta = d.get("kind"), d.get("metadata") or {}
        name = meta.get("name")
        if not (d.get("apiVersion") and kind and name):
            errs.append(f"document without apiVersion/kind/metadata.name: {d}")
            continue
        if kind != "Namespace" and meta.get("namespace") != "fhirschema":
            errs.append(f"{kind}/{name}: namespace must be fhirschema")
        by_kind.setdefault(kind, {})[name] = d
    pod_labels: list[dict] = []
    for kind in WORKLOADS:
        for name, d in by_kind.get(kind, {}).items():
            spec = d["spec"]
            sel = spec.get("selector", {}).get("matchLabels", {})
            labels = spec["template"]["metadata"].get("labels", {})
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                errs.append(f"{kind}/{name}: selector {sel} does not match pod labels {labels}")
            pod_labels.append(labels)
            for c in spec["template"]["spec"]["containers"]:
                if not c.get("image") or c["image"].endswith(":latest"):
                    errs.append(f"{kind}/{name}: container {c.get('name')} has no pinned image")
                for ref in c.get("envFrom", []):
                    for key, k in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                        if key in ref and ref[key]["name"] not in {**by_kind.get(k, {}), **external(k)}:
                            errs.append(f"{kind}/{name}: {k} {ref[key]['name']} not defined")
                for env in c.get("env", []):
                    src = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if src and src["name"] not in {**by_kind.get("Secret", {}), **EXTERNAL_SECRETS}:
                        errs.append(f"{kind}/{name}: Secret {src['name']} not defined")
    for name, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        if not any(all(lbl.get(k) == v for k, v in sel.items()) for lbl in pod_labels):
            errs.append(f"Service/{name}: selector {sel} matches no workload")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            errs.append(f"HPA/{name}: target {ref['kind']}/{ref['name']} not defined")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            errs.append(f"HPA/{name}: minReplicas > maxReplicas")
    return errs + check_production(docs)


def external(kind: str) -> dict[str, set[str]]:
    return EXTERNAL_SECRETS if kind == "Secret" else {}


def custom_resources(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents the Kubernetes schemas do not cover (KEDA, Prometheus Operator)."""
    return [d for d in docs if d["apiVersion"].split("/")[0] in CRD_GROUPS]


def check_custom_resources(docs: list[dict[str, Any]]) -> list[str]:
    return [e for d in custom_resources(docs) for e in validate_custom_resource(d)]


def check_compose(path: Path = ROOT / "docker-compose.yml") -> tuple[list[str], list[str]]:
    """(errors, missing Dockerfiles)."""
    doc = yaml.safe_load(path.read_text())
    services: dict[str, dict] = doc.get("services", {})
    errs, missing = [], []
    for name, svc in services.items():
        if not (svc.get("image") or svc.get("build")):
            errs.append(f"compose {name}: neither image nor build")
        if build := svc.get("build"):
            ctx = ROOT / (build.get("context", ".") if isinstance(build, dict) else build)
            dockerfile = ctx / (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            if not dockerfile.is_file():
                missing.append(str(dockerfile.relative_to(ROOT)))
        for dep in svc.get("depends_on", []):
            if dep not in services:
                errs.append(f"compose {name}: depends_on unknown service {dep}")
        env = svc.get("environment") or {}
        for key, value in env.items() if isinstance(env, dict) else []:
            for host in re.findall(r"^[a-z]+://([A-Za-z0-9_-]+)[:/]", str(value)):
                if host not in services:
                    errs.append(f"compose {name}: {key} points at unknown host {host}")
            if (
                key.endswith("_ENDPOINT")
                and "${" not in str(value)
                and str(value).split(":")[0] not in services
            ):
                errs.append(f"compose {name}: {key} points at unknown host {value}")
    return errs, missing


# `pip install .` or `pip wheel ... .`: a build from source, which compiles the validator by default.
_BUILDS_FROM_SOURCE = re.compile(r"\bpip (?:install|wheel)\b[^&;|]*\s\.(?:\s|$)")
INSTALLS_COMPILER = re.compile(r"\bapt-get install\b[^&;|]*\sgcc\b")
COMPILE_OFF = re.compile(r"\bFHIRSCHEMA_COMPILE=0\b")


def load_dockerfile(path: Path) -> list[dict[str, Any]]:
    """Stages in order: {"image", "name" (the AS alias or None), "steps": [(INSTRUCTION, args)]}."""
    # Comment lines go first: Docker drops them even inside a continued instruction.
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    stages: list[dict[str, Any]] = []
    for line in re.sub(r"\\[ \t]*\n", " ", "\n".join(lines)).splitlines():
        instruction, _, args = line.strip().partition(" ")
        args = " ".join(args.split())
        if instruction.upper() == "FROM":
            image, *alias = re.split(r"\s+as\s+", args, maxsplit=1, flags=re.IGNORECASE)
            stages.append({"image": image, "name": alias[0] if alias else None, "steps": []})
        elif instruction and stages:
            stages[-1]["steps"].append((instruction.upper(), args))
    return stages


def check_dockerfile(path: Path, context: Path = ROOT) -> list[str]:
    where = str(path.relative_to(context)) if path.is_relative_to(context) else str(path)
    stages = load_dockerfile(path)
    if not stages:
        return [f"{where}: no FROM"]
    errs: list[str] = []
    for n, stage in enumerate(stages):
        label = f"{where} stage {stage['name'] or n}"
        earlier = {s["name"] for s in stages[:n]}
        runs = [args for ins, args in stage["steps"] if ins == "RUN"]
        env = " ".join(args for ins, args in stage["steps"] if ins == "ENV")
        for ins, args in stage["steps"]:
            if ins != "COPY":
                continue
            words = args.split()
            source = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            if source is not None:
                if source not in earlier:
                    errs.append(f"{label}: COPY --from={source} names no earlier stage")
                continue
            for src in [w for w in words if not w.startswith("--")][:-1]:
                if not (context / src).exists():
                    errs.append(f"{label}: COPY {src} not in the build context")
        compiler = any(INSTALLS_COMPILER.search(r) for r in runs)
        for run in runs:
            if _BUILDS_FROM_SOURCE.search(run) and not compiler and not COMPILE_OFF.search(run + " " + env):
                errs.append(f"{label}: builds from source without a C compiler or FHIRSCHEMA_COMPILE=0")
    final = stages[-1]["steps"]
    users = [args for ins, args in final if ins == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errs.append(f"{where}: the final stage runs as root")
    cmds = [args for ins, args in final if ins == "CMD"]
    if not cmds or not cmds[-1].startswith("["):
        errs.append(f"{where}: the final stage needs an exec-form CMD (PID 1 then gets SIGTERM)")
    return errs


def check_dockerfiles(root: Path = ROOT / "services") -> list[str]:
    return [e for path in sorted(root.glob("*/Dockerfile")) for e in check_dockerfile(path)]


def main() -> int:
    docs = load_k8s()
    errs = check_k8s(docs) + check_custom_resources(docs)
    cerrs, missing = check_compose()
    cerrs += check_dockerfiles()
    for e in [*errs, *cerrs]:
        print("ERROR", e)
    for m in missing:
        print("MISSING", m)
    print("ok" if not (errs or cerrs or missing) else "problems found")
    return 1 if errs or cerrs or missing else 0


if __name__ == "__main__":
    sys.exit(main())
