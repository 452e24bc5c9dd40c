"""The gateway's /ig routes (issue 11 §4) on fakes: the fixed contract's names, shapes and
statuses, the `registry` check (configured registries only), bad package specs and the
schedule (GET/PUT /ig/schedule: 400 naming the field, 503 with Retry-After)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fhirschema_bus.contracts import (
    IngestedPackage,
    IngestJob,
    IngestRequest,
    IngestSchedule,
    JobState,
    RegistryAnswer,
    RegistryPackage,
    RegistryQuery,
    ScheduleReply,
    ScheduleView,
)
from fhirschema_bus.settings import AuthSettings, PackageSettings, S3Settings
from tests.services.test_gateway_support import create_app  # puts the services on sys.path

from gateway.bootstrap import Settings, bootstrap  # isort: skip
from gateway.service.ingest import IngestService  # isort: skip

REGISTRY = "http://registry.example/fhir"
FOLDER = "/srv/packages"


class FakeIngest:
    """KV_INGEST, the ingest subject and ig-ingest's search and schedule, in memory."""

    def __init__(self) -> None:
        self.queued: list[IngestRequest] = []
        self.records: dict[str, IngestJob] = {}
        self.ingested: list[IngestedPackage] = []
        self.answer = RegistryAnswer()
        self.queries: list[RegistryQuery] = []
        self.schedule: IngestSchedule | None = None
        self.refusal: ScheduleReply | None = None  # what ig-ingest answers instead (400, 503)

    async def queue(self, req: IngestRequest, job: IngestJob) -> None:
        self.records[job.job] = job
        self.queued.append(req)

    async def job(self, job_id: str) -> IngestJob | None:
        return self.records.get(job_id)

    async def jobs(self, limit: int) -> list[IngestJob]:
        return sorted(self.records.values(), key=lambda j: j.created, reverse=True)[:limit]

    async def packages(self) -> list[IngestedPackage]:
        return self.ingested

    async def search(self, query: RegistryQuery) -> RegistryAnswer:
        self.queries.append(query)
        return self.answer

    async def get_schedule(self) -> ScheduleReply:
        return self.refusal or ScheduleReply(schedule=self._view())

    async def put_schedule(self, schedule: IngestSchedule) -> ScheduleReply:
        if self.refusal is not None:
            return self.refusal
        self.schedule = schedule
        return ScheduleReply(schedule=self._view())

    def _view(self) -> ScheduleView | None:
        if self.schedule is None:
            return None
        return ScheduleView(**self.schedule.model_dump(), next_run=datetime(2026, 12, 4, 3, 17, tzinfo=UTC))


@pytest.fixture
def fake() -> FakeIngest:
    return FakeIngest()


@pytest.fixture
async def api(fake: FakeIngest) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        s3=S3Settings(access_key=SecretStr("k"), secret_key=SecretStr("s")),
        packages=PackageSettings(package_sources=f"{REGISTRY}/,npm+https://npm.example,{FOLDER}"),
        auth=AuthSettings(auth="off"),  # the ig:admin scope: tests/services/test_gateway_auth.py
    )
    container = bootstrap(settings)  # connects nothing: the app's lifespan is not run here
    container.ingest = IngestService(fake, fake, settings.packages.registry_names(), fake)
    app = create_app(settings, container)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:
        yield c


async def test_process_queues_a_job_and_its_status_answers_at_once(
    api: httpx.AsyncClient, fake: FakeIngest
) -> None:
    r = await api.post(
        "/ig/process", json={"packages": ["hl7.fhir.au.base", "hl7.fhir.us.core#6.1.0", "x#1.2.x"]}
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"job", "status"} and body["status"] == f"/ig/status/{body['job']}"
    assert r.headers["location"] == body["status"]
    [req] = fake.queued
    assert (req.job_id, req.packages, req.dependencies, req.registry, req.sources) == (
        body["job"], ["hl7.fhir.au.base", "hl7.fhir.us.core#6.1.0", "x#1.2.x"], True, None, [],
    )  # fmt: skip
    status = (await api.get(body["status"])).json()
    assert status["job"] == body["job"] and status["state"] == "queued" and status["finished"] is None
    assert {"job", "state", "packages", "created", "finished"} <= set(status)
    assert [(p["name"], p["state"]) for p in status["packages"]] == [
        ("hl7.fhir.au.base", "queued"), ("hl7.fhir.us.core", "queued"), ("x", "queued"),
    ]  # fmt: skip
    for p in status["packages"]:
        assert {"name", "version", "state", "schemas", "sha256", "source"} <= set(p)


async def test_dependencies_false_and_a_configured_registry(api: httpx.AsyncClient, fake: FakeIngest) -> None:
    for given, chosen in ((REGISTRY, REGISTRY), (REGISTRY + "/", REGISTRY), ("https://npm.example", "https://npm.example"), (FOLDER, FOLDER)):  # fmt: skip
        r = await api.post(
            "/ig/process", json={"packages": ["a.b"], "dependencies": False, "registry": given}
        )
        assert r.status_code == 202, (given, r.text)
        assert (fake.queued[-1].registry, fake.queued[-1].dependencies) == (chosen, False)


async def test_a_registry_not_configured_is_a_400_and_nothing_is_queued(
    api: httpx.AsyncClient, fake: FakeIngest
) -> None:
    for registry in ("http://169.254.169.254/latest", "https://packages.fhir.org", "", "npm+" + REGISTRY):
        r = await api.post("/ig/process", json={"packages": ["a.b"], "registry": registry})
        assert r.status_code == 400, (registry, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "not configured" in r.json()["issue"][0]["diagnostics"] and REGISTRY in r.text
    assert fake.queued == []


@pytest.mark.parametrize(
    "body",
    [
        {"packages": []},
        {"packages": ["../../etc/passwd"]},
        {"packages": ["http://evil.example/x.tgz"]},
        {"packages": ["ok.name#../1"]},
        {"packages": ["a b"]},
        {"packages": "hl7.fhir.us.core"},
        {"packages": ["a.b"], "dependencies": "maybe"},
        {},
    ],
)
async def test_bad_bodies_are_400s(api: httpx.AsyncClient, fake: FakeIngest, body: dict[str, Any]) -> None:
    r = await api.post("/ig/process", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert fake.queued == []
    assert (
        await api.post("/ig/process", content=b"{not json", headers={"content-type": "application/json"})
    ).status_code == 400


async def test_sources_cannot_be_set_over_http(api: httpx.AsyncClient, fake: FakeIngest) -> None:
    r = await api.post("/ig/process", json={"packages": ["a.b"], "sources": ["http://evil.example"]})
    assert r.status_code == 202
    assert fake.queued[0].sources == []


async def test_unknown_jobs_are_404(api: httpx.AsyncClient) -> None:
    for job in ("nope", "a.b", "..", "x" * 200, "%2e%2e"):
        r = await api.get(f"/ig/status/{job}")
        assert r.status_code == 404, (job, r.text)


async def test_overview_lists_ingested_packages_and_recent_jobs(
    api: httpx.AsyncClient, fake: FakeIngest
) -> None:
    fake.ingested = [
        IngestedPackage(
            name="hl7.fhir.r4.core", version="4.0.1", schemas=650, sha256="ab" * 32, source=FOLDER
        )
    ]
    fake.records["j1"] = IngestJob(job="j1", state=JobState.SUCCEEDED)
    body = (await api.get("/ig/status")).json()
    [pkg] = body["packages"]
    assert {"name", "version", "ingested_at", "schemas", "sha256", "source"} <= set(pkg)
    assert (pkg["name"], pkg["version"], pkg["schemas"]) == ("hl7.fhir.r4.core", "4.0.1", 650)
    assert [j["job"] for j in body["jobs"]] == ["j1"] and body["jobs"][0]["state"] == "succeeded"


async def test_registry_search(api: httpx.AsyncClient, fake: FakeIngest) -> None:
    fake.answer = RegistryAnswer(packages=[RegistryPackage(
        name="hl7.fhir.us.core", description="US Core", fhirVersion="R4", latest="8.0.0",
        versions=["3.1.1", "6.1.0", "8.0.0"], registry=REGISTRY,
    )], errors=["https://npm.example: 503"])  # fmt: skip
    r = await api.get(
        "/ig/registry",
        params={"name": "us.core", "canonical": "http://hl7.org/fhir/us/core", "fhirversion": "R4"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == [{"name": "hl7.fhir.us.core", "description": "US Core", "fhirVersion": "R4",
                         "latest": "8.0.0", "versions": ["3.1.1", "6.1.0", "8.0.0"], "registry": REGISTRY}]  # fmt: skip
    assert fake.queries == [
        RegistryQuery(name="us.core", canonical="http://hl7.org/fhir/us/core", fhirversion="R4")
    ]
    fake.answer = RegistryAnswer(errors=[f"{REGISTRY}: timed out"])
    r = await api.get("/ig/registry")
    assert r.status_code == 502 and "timed out" in r.text
    fake.answer = RegistryAnswer()
    assert (await api.get("/ig/registry", params={"name": "nothing"})).json() == []


SCHEDULE = {"cron": "17 3 * * *", "timezone": "UTC", "packages": ["hl7.fhir.us.core#6.1.0"],
            "masks": ["hl7.fhir.us.*"], "enabled": True}  # fmt: skip


async def test_schedule_put_then_get(api: httpx.AsyncClient, fake: FakeIngest) -> None:
    assert (await api.get("/ig/schedule")).status_code == 404  # none stored yet
    r = await api.put("/ig/schedule", json=SCHEDULE)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in SCHEDULE} == SCHEDULE
    assert fake.schedule == IngestSchedule(**SCHEDULE)  # passed on as the contract, not a dict
    got = (await api.get("/ig/schedule")).json()
    assert {k: got[k] for k in SCHEDULE} == SCHEDULE
    assert got["next_run"].startswith("2026-12-04T03:17") and {"last_run", "last_job"} <= set(got)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "61 3 * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"masks": ["hl7 fhir"]}, "masks"),
        ({"masks": [""]}, "masks"),
        ({"enabled": "sometimes"}, "enabled"),
        ({"packages": "hl7.fhir.us.core"}, "packages"),
    ],
)
async def test_bad_schedules_are_400s_naming_the_field(
    api: httpx.AsyncClient, fake: FakeIngest, change: dict[str, Any], field: str
) -> None:
    r = await api.put("/ig/schedule", json={**SCHEDULE, **change})
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert f"body.{field}" in outcome["issue"][0]["diagnostics"], outcome
    assert fake.schedule is None


async def test_ig_ingest_refusing_a_schedule_is_passed_on(api: httpx.AsyncClient, fake: FakeIngest) -> None:
    fake.refusal = ScheduleReply(error="cron: too frequent", status=400)
    r = await api.put("/ig/schedule", json=SCHEDULE)
    assert r.status_code == 400 and "cron: too frequent" in r.json()["issue"][0]["diagnostics"]
    fake.refusal = ScheduleReply(error="the schedule cannot be read: KV timed out", status=503)
    for r in (await api.get("/ig/schedule"), await api.put("/ig/schedule", json=SCHEDULE)):
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert "KV timed out" in r.json()["issue"][0]["diagnostics"]


async def test_schedule_without_nats_is_503_with_retry_after() -> None:
    """The gateway's own adapter, NATS never connected: 503 + Retry-After, not a 500."""
    settings = Settings(
        s3=S3Settings(access_key=SecretStr("k"), secret_key=SecretStr("s")), auth=AuthSettings(auth="off")
    )
    app = create_app(settings, bootstrap(settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:
        for r in (await c.get("/ig/schedule"), await c.put("/ig/schedule", json=SCHEDULE)):
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["resourceType"] == "OperationOutcome"
