"""The Grafana dashboard and the Prometheus alert rules (deploy/): every expression parses
(promql-parser, Prometheus' grammar) and names only metrics and labels the services export;
every exported label is bounded."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, Metric, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from fhirschema_bus import metrics as worker_metrics
from tests.conftest import ROOT
from tests.services.test_gateway_support import create_app  # noqa: F401  (puts gateway on the path)

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fhirschema.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET_LABELS = {"job", "instance"}  # Prometheus adds them to every scraped series
SYNTHETIC = {"up": set[str]()}  # Prometheus' own series per target
# What a label may hold: a closed set (a service, a durable, a result, a route template, ...).
BOUNDED = {
    "service",
    "durable",
    "result",
    "layer",
    "route",
    "status",
    "method",
    "kind",
    "reason",  # storage's index rebuild causes
    "scheduled",  # ig-ingest job by the schedule or not (true / false)
    "channel",  # ig-ingest failure notices: how they were sent (a closed set)
    "version",
    "engine",
    "python",
}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("_sum", "_count", "_created")}  # fmt: skip


@dataclass
class Exported:
    """Series names as /metrics shows them, with their label names."""

    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, metric: MetricWrapperBase) -> None:
        kind = metric._type  # type: ignore[attr-defined]
        names = set(metric._labelnames)  # type: ignore[attr-defined]
        if kind == "info":
            names |= {"version", "engine", "python"}  # fhirschema_build_info's keys
        for suffix in SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            self.labels[metric._name + suffix] = names | extra  # type: ignore[attr-defined]


def exported() -> Exported:
    """What the workers' default registry holds (the shared metrics, storage's index metrics, any
    other a service module defines) and what a gateway's registry holds."""
    import storage_service.rebuild  # noqa: F401  (registers storage's own metrics)
    from gateway.metrics import Metrics

    ex = Exported()
    gateway = Metrics()
    collectors = [*REGISTRY._collector_to_names, *gateway.registry._collector_to_names]  # type: ignore[attr-defined]
    assert worker_metrics.VALIDATIONS in collectors and worker_metrics.DEAD_LETTERS in collectors
    for obj in collectors:
        if isinstance(obj, MetricWrapperBase):
            ex.add(obj)
    # The definitions are what /metrics serves: every family there is one of them.
    for registry_text in (generate_latest(), gateway.render()):
        for family in _families(registry_text):
            if family.name.startswith(("fhirschema_", "gateway_")):
                assert any(n.startswith(family.name) for n in ex.labels), family.name
    return ex


def _families(text: bytes) -> list[Metric]:
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(text.decode()))


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables stand for durations."""
    return re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)


def references(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(selector metric names with their matcher labels, labels used in by/without/on/ignoring)."""
    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node: Any) -> bool:
        kind = type(node).__name__
        if kind == "VectorSelector":
            selectors.append((node.name, {m.name for m in node.matchers.matchers}))
        elif kind == "AggregateExpr" and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif kind == "BinaryExpr" and node.modifier is not None and node.modifier.matching is not None:
            grouping.update(node.modifier.matching.labels)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selectors, grouping


def check(expr: str, ex: Exported) -> None:
    selectors, grouping = references(expr)
    assert selectors, f"no metric in {expr!r}"
    allowed = set(TARGET_LABELS)
    for name, matchers in selectors:
        known = {**ex.labels, **SYNTHETIC}
        assert name in known, f"{name} is not exported by any service: {expr!r}"
        assert matchers <= known[name] | TARGET_LABELS, (
            f"{name} has no label {matchers - known[name]}: {expr!r}"
        )
        allowed |= known[name]
    assert grouping <= allowed, f"labels {grouping - allowed} are on none of the metrics of {expr!r}"


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus"  # deploy/grafana/provisioning's
            exprs.append(grafana_to_promql(target["expr"]))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_exported_label_is_bounded() -> None:
    for name, labels in exported().labels.items():
        assert labels - {"le"} <= BOUNDED, f"{name}: unbounded label(s) {labels - BOUNDED - {'le'}}"


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_expressions_parse_and_name_exported_metrics(expr: str) -> None:
    check(expr, exported())


def test_the_dashboard_shows_what_the_issue_asks() -> None:
    names = {name for expr in dashboard_exprs() for name, _ in references(expr)[0]}
    for wanted in (
        "gateway_http_request_seconds_bucket", "fhirschema_validations_total",
        "fhirschema_validation_engine_seconds_bucket", "fhirschema_consumer_pending",
        "fhirschema_consumer_ack_pending", "fhirschema_consumer_redelivered", "fhirschema_dead_letters",
        "fhirschema_cache_requests_total", "fhirschema_ingest_runs_total", "fhirschema_ingest_seconds_bucket",
        "fhirschema_ingest_last_success_timestamp_seconds", "fhirschema_build_info",
    ):  # fmt: skip
        assert wanted in names, wanted
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_rules_parse_and_name_exported_metrics(rule: dict[str, Any]) -> None:
    check(rule["expr"], exported())
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    if "for" in rule:
        promql_parser.parse_duration(rule["for"])


def test_the_alerts_cover_what_the_issue_asks() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    for wanted in (
        "FhirschemaDeadLettersGrowing", "FhirschemaConsumerLag", "FhirschemaGatewayErrorRate",
        "FhirschemaGatewayLatencyP99", "FhirschemaIngestFailing", "FhirschemaIngestStale", "FhirschemaServiceDown",
    ):  # fmt: skip
        assert wanted in names, wanted


def test_a_name_no_service_exports_is_caught() -> None:
    with pytest.raises(AssertionError, match="not exported"):
        check("rate(fhirschema_validations_count_total[5m])", exported())
    with pytest.raises(AssertionError, match="no label"):
        check('fhirschema_consumer_pending{subject="x"}', exported())
    with pytest.raises(AssertionError, match="none of the metrics"):
        check("sum by (job_id) (fhirschema_consumer_pending)", exported())
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (durable (fhirschema_consumer_pending)")
