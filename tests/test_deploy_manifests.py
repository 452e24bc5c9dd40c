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
