"""Issue 11 §5: US Core 6.1.0 ingested with its dependencies through POST /ig/process, from the
local registry server serving ../shared/fhir/packages, on a stack as `make up` runs it (real
NATS/S3/Redis, storage, a validator in repository mode, ig-ingest loading R4 core at start);
then POST /validate of its 183 examples gives exactly the CLI's outcomes with the same packages.

The registry holds none of US Core's dependencies at the versions it names except R4 core:
those are named on US Core in the job's status, and the CLI is given the very packages the job
ingested (a folder of just those tarballs), so both sides validate in the same context.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError

from fhirschema.package import load_package
from fhirschema_bus import subjects as s
from fhirschema_bus.servers import RunningServer
from tests.conftest import PACKAGES
from tests.services.ig_support import process
from tests.services.parity_support import CORE, cli, corpora, differences, via_sync
from tests.services.registry_server import serve_registry
from tests.services.test_gateway_support import gateway_stack, wait_ready

pytestmark = pytest.mark.slow
US_CORE = "hl7.fhir.us.core#6.1.0"


async def validator_holds(js: JetStreamContext, spec: str, timeout: float = 120.0) -> None:
    kv = await js.key_value(s.KV_SERVICES)
    deadline = time.monotonic() + timeout
    while True:
        try:
            beats = [
                orjson.loads((await kv.get(k)).value) for k in await kv.keys() if k.startswith("validator")
            ]
        except NoKeysError:
            beats = []
        if any(spec in b["detail"].get("packages", ()) and b["detail"].get("ready") for b in beats):
            return
        assert time.monotonic() < deadline, beats
        await asyncio.sleep(0.2)


async def test_us_core_ingested_through_the_api_validates_as_the_cli(
    nats_server: RunningServer, s3_server: RunningServer, redis_server: RunningServer, tmp_path: Path
) -> None:
    [corpus] = [c for c in corpora() if c.name == US_CORE]
    assert len(corpus.items) == 183
    logs = tmp_path / "logs"
    logs.mkdir()
    with serve_registry(PACKAGES) as reg:
        async with gateway_stack(
            nats_server, s3_server, redis_server, logs, packages=CORE, ingest_sources=reg.base, wait=False
        ) as st, st.client() as c:  # fmt: skip
            await wait_ready(c, logs / "ig-ingest.log", timeout=300)
            job = await process(c, {"packages": [US_CORE]}, timeout=300)
            assert job["state"] == "succeeded", job
            by = {f"{p['name']}#{p['version']}": p for p in job["packages"] if p["state"] == "succeeded"}
            us = by[US_CORE]
            assert us["schemas"] > 0 and us["source"] == reg.base and len(us["sha256"]) == 64
            assert CORE in by  # its dependency, found (ingested at start-up: skipped)
            wanted = load_package(PACKAGES / f"{US_CORE}.tgz").dependencies
            absent = sorted(
                f"{n}#{v}" for n, v in wanted.items() if not (PACKAGES / f"{n}#{v}.tgz").is_file()
            )
            assert sorted(us["missing_dependencies"]) == absent, job
            assert {p["requested"] for p in job["packages"] if p["state"] == "failed"} == set(absent)
            assert any(r.endswith("/hl7.fhir.us.core/6.1.0") for r in reg.requests)
            await validator_holds(st.js, US_CORE)
            got = await via_sync(c, corpus)
    held = tmp_path / "held"  # the CLI gets exactly the packages the job ingested
    held.mkdir()
    for spec in by:
        (held / f"{spec}.tgz").symlink_to(PACKAGES / f"{spec}.tgz")
    expected = cli(corpus, tmp_path / "cli", packages=held)
    diffs = differences(corpus, expected, got, "POST /validate after POST /ig/process")
    assert not diffs, f"{len(diffs)}/{len(corpus.items)} differ:\n" + "\n".join(diffs[:20])
    print(f"\n{US_CORE} via POST /ig/process: {len(got)} examples ({sum(v for v, _ in got)} valid) = CLI")
