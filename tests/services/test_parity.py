"""Issue 9 §2-§3 on a real stack: the service's verdict is the CLI's.

A stack as `make up` runs it — real NATS, S3 and Redis, storage, TWO validator replicas in
repository mode, ig-ingest loading R4 core from ../shared/fhir/packages at start-up — is asked
right after /ready (start-up timing), then every other shared package is ingested while it
runs, and the shared corpora (R4 spec examples: every 7th here, all with bench/parity.py; US Core
3.1.1 and 6.1.0 — its 183 examples —, IPS 2.0.0, the Swiss IGs, genomics reporting; a Synthea
sample) go through POST /validate, POST /validate/batch and WS /validate/stream: each outcome
must equal `fhirschema validate` on the same bytes with the same packages. And an uploaded
profile, then replaced, holds on every replica, no request seeing the old rule once it has: the
time it takes is printed; it must be within PROPAGATION_S, 10 s by default because CI shares its
two CPUs (2.01 s seen at load 6), 2 s — issue 9's figure — with bench/parity.py.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js.errors import NoKeysError

from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import IngestRequest
from fhirschema_bus.repository import read_state, repository_kv
from tests.conftest import PACKAGES
from tests.services.fakes import profile_requiring
from tests.services.parity_support import (
    CORE,
    PACKAGE_FILES,
    Corpus,
    Item,
    Verdict,
    cli,
    corpora,
    differences,
    via_batch,
    via_sync,
    via_ws,
)
from tests.services.test_gateway_support import Stack, gateway_stack, wait_ready

pytestmark = pytest.mark.slow
# FHIRSCHEMA_PARITY_FULL=1 (bench/parity.py): every R4 spec example and every Synthea line.
CORPORA = {c.name: c for c in corpora(full=os.environ.get("FHIRSCHEMA_PARITY_FULL") == "1")}


async def validator_beats(kv: Any) -> list[dict[str, Any]]:
    """The validator replicas' heartbeats (none while the bucket is between writes)."""
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    return [orjson.loads((await kv.get(k)).value) for k in keys if k.startswith("validator.")]


class ParityStack:
    def __init__(self, stack: Stack, ready_after: float, first: list[Verdict], first_seconds: float):
        self.stack, self.ready_after, self.first, self.first_seconds = (
            stack,
            ready_after,
            first,
            first_seconds,
        )
        self.ingested = False


@pytest.fixture(scope="module")
async def parity(nats_server, s3_server, redis_server, tmp_path_factory) -> AsyncIterator[ParityStack]:
    logs = tmp_path_factory.mktemp("parity")
    async with gateway_stack(
        nats_server, s3_server, redis_server, logs, validators=2, packages=CORE,
        ingest_sources=str(PACKAGES), wait=False, max_batch_items=10_000, max_body_bytes=64 << 20,
    ) as st:  # fmt: skip
        async with st.client() as c:
            ready_after = await wait_ready(c, logs / "ig-ingest.log", timeout=300)
            t0 = time.monotonic()  # the first requests, right after /ready
            first = await via_sync(c, CORPORA["r4-spec"])
            first_seconds = time.monotonic() - t0
        print(f"\nready after {ready_after:.1f}s; first {len(first)} requests took {first_seconds:.2f}s")
        yield ParityStack(st, ready_after, first, first_seconds)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
async def ingested(parity: ParityStack) -> ParityStack:
    """Every other shared package ingested while the stack runs, through ig-ingest."""
    if parity.ingested:
        return parity
    st = parity.stack
    t0 = time.monotonic()
    jobs = {}
    for spec in PACKAGE_FILES:
        if spec == CORE:
            continue
        job = jobs[spec] = f"ingest-{uuid.uuid4().hex[:12]}"
        req = IngestRequest(job_id=job, packages=[spec], dependencies=False)
        await st.js.publish(s.INGEST_PACKAGE, req.model_dump_json().encode())
    # Registered in the repository state (a job for a package without StructureDefinitions
    # stays "running" with total 0 in ig-ingest today, so its state is not what we wait for).
    while {p.package for p in (await read_state(await repository_kv(st.js)))[0].packages} != set(
        PACKAGE_FILES
    ):
        failed = [
            (spec, j) for spec, job in jobs.items() if (j := await st.jobs.get(job)) and j.state == "failed"
        ]
        assert not failed, failed
        assert time.monotonic() - t0 < 300, "not every package registered within 300 s"
        await asyncio.sleep(0.5)
    # Both replicas hold every package (their heartbeats say so) and are ready.
    kv = await st.js.key_value(s.KV_SERVICES)
    while True:
        beats = await validator_beats(kv)
        holding = [
            b
            for b in beats
            if set(PACKAGE_FILES) <= set(b["detail"].get("packages", ())) and b["detail"]["ready"]
        ]
        if len(holding) >= 2:
            break
        assert time.monotonic() - t0 < 600, beats
        await asyncio.sleep(0.5)
    print(
        f"\n{len(jobs)} packages ingested while running, held by both replicas after {time.monotonic() - t0:.1f}s"
    )
    parity.ingested = True
    return parity


def check(corpus: Corpus, expected: list[Verdict], got: list[Verdict], path: str) -> None:
    diffs = differences(corpus, expected, got, path)
    assert not diffs, f"{len(diffs)}/{len(corpus.items)} differ:\n" + "\n".join(diffs[:20])


async def test_the_first_requests_right_after_ready_are_the_clis(parity: ParityStack, workdir: Path) -> None:
    corpus = CORPORA["r4-spec"]
    check(corpus, cli(corpus, workdir / "first"), parity.first, "POST /validate (first after /ready)")
    assert parity.first_seconds < 120


@pytest.mark.parametrize("name", list(CORPORA))
async def test_every_path_gives_the_clis_verdict(name: str, ingested: ParityStack, workdir: Path) -> None:
    corpus = CORPORA[name]
    files, ndjson = cli(corpus, workdir / name), cli(corpus, workdir / f"{name}-batch", batch=True)
    st = ingested.stack
    async with st.client() as c:
        t0 = time.monotonic()
        check(corpus, files, await via_sync(c, corpus), "POST /validate")
        t1 = time.monotonic()
        check(corpus, ndjson, await via_batch(c, corpus), "POST /validate/batch")
        t2 = time.monotonic()
    check(corpus, files, await via_ws(st.ws_url, corpus), "WS /validate/stream")
    valid = sum(v for v, _ in files)
    print(
        f"\n{name}: {len(corpus.items)} items ({valid} valid) identical on 3 paths; "
        f"sync {t1 - t0:.1f}s, batch {t2 - t1:.1f}s, ws {time.monotonic() - t2:.1f}s"
    )


PROFILE = "http://example.org/fhir/StructureDefinition/parity-needs-something"
PROPAGATION_S = float(os.environ.get("FHIRSCHEMA_PARITY_PROPAGATION_S", "10"))


async def test_an_uploaded_profile_replaced_holds_on_every_replica(parity: ParityStack) -> None:
    st = parity.stack
    only_gender = {"resourceType": "Patient", "gender": "female"}
    kv = await st.js.key_value(s.KV_SERVICES)

    async def replicas_at(revision: int) -> bool:
        beats = await validator_beats(kv)
        return len(beats) >= 2 and all(b["detail"].get("repository_revision", -1) >= revision for b in beats)

    async with st.client() as c:

        async def verdicts(n: int = 12) -> set[str]:
            rs = await asyncio.gather(
                *(c.post("/validate", json=only_gender, params={"profile": PROFILE}) for _ in range(n))
            )
            return {r.headers["x-validation-result"] for r in rs}

        r = await c.post("/schemas", json=profile_requiring(PROFILE, "birthDate"))
        assert r.status_code == 201, r.text
        schema_id = r.json()["id"]
        t0 = time.monotonic()
        while await verdicts() != {"invalid"}:
            assert time.monotonic() - t0 < PROPAGATION_S, (
                f"the uploaded profile was not enforced within {PROPAGATION_S} s"
            )
        uploaded = time.monotonic() - t0
        r = await c.put(f"/schemas/{schema_id}", json=profile_requiring(PROFILE, "gender"))
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        revision = (await read_state(await repository_kv(st.js)))[0].revision
        # The new rule (gender required, present) on every replica: each one's heartbeat says it
        # reached the revision, and no request (a dozen at a time, both replicas pulling) sees
        # the old one.
        while not (await replicas_at(revision) and await verdicts() == {"valid"}):
            assert time.monotonic() - t0 < PROPAGATION_S, (
                f"the replaced profile did not hold within {PROPAGATION_S} s"
            )
        replaced = time.monotonic() - t0
        assert await verdicts(24) == {"valid"}
        r = await c.post("/validate", json={"resourceType": "Patient"}, params={"profile": PROFILE})
        assert r.headers["x-validation-result"] == "invalid" and "gender" in r.text
        assert (await c.delete(f"/schemas/{schema_id}")).status_code in (200, 204)
    print(f"\nupload enforced after {uploaded:.2f}s, replacement on both replicas after {replaced:.2f}s")


async def test_an_unresolvable_meta_profile_is_a_warning_on_every_path_as_in_the_cli(
    parity: ParityStack, workdir: Path
) -> None:
    """The gateway asks only for the profiles the caller named: meta.profile is the engine's
    to read (was: sent as requested profiles on the sync paths, so an unknown one was an error
    there and a warning in a batch and the CLI)."""
    items = (
        Item("unknown-meta.json", orjson.dumps({"resourceType": "Patient", "meta": {"profile": [PROFILE + "-x"]}})),
        Item("versioned-meta.json", orjson.dumps(
            {"resourceType": "Patient", "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Patient|4.0.1"]}}
        )),
    )  # fmt: skip
    corpus = Corpus("meta-profile", CORE, items)
    files = cli(corpus, workdir / "meta")
    assert files[0][0] and any(i["severity"] == "warning" for i in files[0][1]["issue"])
    async with parity.stack.client() as c:
        check(corpus, files, await via_sync(c, corpus), "POST /validate")
        check(corpus, cli(corpus, workdir / "meta-batch", batch=True), await via_batch(c, corpus), "batch")
    check(corpus, files, await via_ws(parity.stack.ws_url, corpus), "WS /validate/stream")
