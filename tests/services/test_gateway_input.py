"""Bad input on every gateway path gives the CLI's verdict for the same bytes (issue 9 §5): JSON
that is not JSON or nests too deeply is a 4xx OperationOutcome (a failed item in a batch, at
once), a repeated key an error issue; the service's outcome equals `fhirschema validate`'s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from fhirschema import jsoninput
from tests.engine.test_cli_convert import fhirschema
from tests.services.test_gateway_support import R4, Stack

FHIR = {"content-type": "application/fhir+json"}
NDJSON = {"content-type": "application/x-ndjson"}
PATIENT = b'{"resourceType": "Patient", "gender": "female"}'
# The first gender is kept (and valid), the repeat is reported: never a silent last-wins.
REPEATED = b'{"resourceType": "Patient", "gender": "female", "gender": "robot"}'


def nested(depth: int) -> bytes:
    """A Patient whose extension value nests `depth` arrays deep."""
    return b'{"resourceType": "Patient", "extension": ' + b"[" * depth + b"]" * depth + b"}"


def cli_outcomes(tmp_path: Path, *inputs: bytes) -> list[dict[str, Any]]:
    """`fhirschema validate` on each input as one NDJSON line: [{"valid", "outcome"}, ...]."""
    path = tmp_path / "inputs.ndjson"
    path.write_bytes(b"\n".join(inputs) + b"\n")
    result = fhirschema("validate", "--package", str(R4), str(path))
    assert result.returncode in (0, 1), result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def codes(outcome: dict[str, Any]) -> list[str]:
    return [c["code"] for i in outcome["issue"] for c in i.get("details", {}).get("coding", [])]


async def job_results(client: httpx.AsyncClient, job: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    deadline = time.monotonic() + 60
    while True:
        status = (await client.get(f"/validate/status/{job}")).json()
        if status["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    rows = [orjson.loads(x) for x in (await client.get(f"/validate/results/{job}")).text.splitlines()]
    return status, sorted(rows, key=lambda r: r["index"])


async def test_deep_nesting_is_a_400_outcome(client: httpx.AsyncClient, tmp_path: Path) -> None:
    [cli] = cli_outcomes(tmp_path, nested(600))
    for depth in (201, 254, 600, 1023, 1024, 5000):
        r = await client.post("/validate", content=nested(depth), headers=FHIR)
        assert r.status_code == 400, (depth, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert codes(r.json()) == ["fs1302"], (depth, r.json())
        if depth == 600:
            assert r.json() == cli["outcome"]  # with the line and column of the fault
    assert (await client.post("/validate", content=nested(190), headers=FHIR)).status_code == 200


async def test_repeated_keys_are_an_error_as_in_the_cli(client: httpx.AsyncClient, tmp_path: Path) -> None:
    [cli] = cli_outcomes(tmp_path, REPEATED)
    r = await client.post("/validate", content=REPEATED, headers=FHIR)
    assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid"
    assert r.json() == cli["outcome"] and cli["valid"] is False
    assert "fs1304" in codes(r.json())


async def test_not_json_is_a_400_with_line_and_column(client: httpx.AsyncClient, tmp_path: Path) -> None:
    bad = b'{"resourceType": "Patient",\n "active": tru}'
    [cli] = cli_outcomes(tmp_path, bad.replace(b"\n", b""))
    r = await client.post("/validate", content=bad, headers=FHIR)
    assert r.status_code == 400 and codes(r.json()) == ["fs1301"] == codes(cli["outcome"])
    positions = {e["url"].rsplit("-", 1)[-1]: e["valueInteger"] for e in r.json()["issue"][0]["extension"]}
    assert positions["line"] == 2 and positions["col"] > 10


async def test_batch_items_fail_at_once_and_match_the_cli(client: httpx.AsyncClient, tmp_path: Path) -> None:
    lines = [PATIENT, nested(600), REPEATED, b'{"resourceType": "Patient", oops}', nested(2000)]
    cli = cli_outcomes(tmp_path, *lines)
    r = await client.post("/validate/batch", content=b"\n".join(lines), headers=NDJSON)
    assert r.status_code == 202, r.text
    status, rows = await job_results(client, r.json()["job"])
    assert status["state"] == "succeeded", status
    assert (status["done"], status["valid"], status["invalid"], status["failed"]) == (5, 1, 1, 3)
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    assert [row["valid"] for row in rows] == [x["valid"] for x in cli]
    assert [row["outcome"] for row in rows] == [x["outcome"] for x in cli]


async def test_batch_array_with_a_deep_item(client: httpx.AsyncClient) -> None:
    body = b"[" + b",".join([PATIENT, nested(600), REPEATED]) + b"]"
    r = await client.post("/validate/batch", content=body, headers=FHIR)
    assert r.status_code == 202, r.text
    status, rows = await job_results(client, r.json()["job"])
    counts = (status["state"], status["valid"], status["invalid"], status["failed"])
    assert counts == ("succeeded", 1, 1, 1), status
    assert codes(rows[1]["outcome"]) == ["fs1302"] and rows[1]["valid"] is False
    # Each member read on its own, as the CLI would: the repeat found, its column in the body.
    [repeat] = jsoninput.parse(REPEATED).issues
    issue = next(i for i in rows[2]["outcome"]["issue"] if codes({"issue": [i]}) == ["fs1304"])
    column = repeat.column + body.index(REPEATED)  # type: ignore[operator]
    assert {e["url"][-3:]: e["valueInteger"] for e in issue["extension"]} == {"ine": 1, "col": column}
    # A Bundle/array that nests well inside the bound: parsed once, repeated keys found per item.
    body = b"[" + b",".join([PATIENT, REPEATED]) + b"]"
    status, rows = await job_results(
        client, (await client.post("/validate/batch", content=body, headers=FHIR)).json()["job"]
    )
    assert [row["valid"] for row in rows] == [True, False] and "fs1304" in codes(rows[1]["outcome"])
    assert rows[1]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]


async def test_websocket_bad_input(stack: Stack) -> None:
    async with websockets.connect(f"{stack.ws_url}/validate/stream", max_size=None) as ws:
        await ws.send(nested(600).decode())
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        assert msg["status"] == 400 and codes(msg["outcome"]) == ["fs1302"]
        await ws.send(REPEATED.decode())
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        assert msg["index"] == 0 and msg["valid"] is False and "fs1304" in codes(msg["outcome"])


async def test_documents_with_repeated_keys_are_refused(client: httpx.AsyncClient) -> None:
    sd = b'{"resourceType": "StructureDefinition", "url": "http://x.org/a", "url": "http://x.org/b"}'
    r = await client.post("/convert/structuredefinition", content=sd, headers=FHIR)
    assert r.status_code == 400 and "repeated" in r.json()["issue"][0]["diagnostics"]
    r = await client.post("/convert/batch", content=b"[" + sd + b"]", headers=FHIR)
    assert r.status_code == 400
    r = await client.post("/schemas", content=nested(600), headers=FHIR)
    assert r.status_code == 400 and codes(r.json()) == ["fs1302"]


# --- FHIR-native entry points (issue 9 §7) ----------------------------------------------------

BAD_PATIENT = {"resourceType": "Patient", "gender": "robot", "birthDate": "yesterday"}
BODYWEIGHT = "http://hl7.org/fhir/StructureDefinition/bodyweight"


def parameters(resource: dict[str, Any], *profiles: str, mode: str | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "resource", "resource": resource}]
    params += [{"name": "profile", "valueUri": p} for p in profiles]
    if mode:
        params.append({"name": "mode", "valueCode": mode})
    return {"resourceType": "Parameters", "parameter": params}


async def test_validate_operation(client: httpx.AsyncClient) -> None:
    expected = (await client.post("/validate", json=BAD_PATIENT)).json()
    for path in ("/$validate", "/Patient/$validate"):
        for body in (BAD_PATIENT, parameters(BAD_PATIENT, mode="create")):
            r = await client.post(path, content=orjson.dumps(body), headers=FHIR)
            assert r.status_code == 200, r.text  # 200 for invalid resources too
            assert r.headers["content-type"].startswith("application/fhir+json")
            assert r.headers["x-validation-result"] == "invalid" and r.json() == expected
    r = await client.post("/$validate", content=PATIENT, headers=FHIR)
    assert r.status_code == 200 and r.headers["x-validation-result"] == "valid"
    r = await client.post("/Observation/$validate", content=PATIENT, headers=FHIR)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = await client.post("/$validate", json=parameters(BAD_PATIENT, mode="delete"))
    assert r.status_code == 400


async def test_validate_operation_profiles(client: httpx.AsyncClient) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
    expected = (await client.post("/validate", params={"profile": BODYWEIGHT}, json=obs)).json()
    r = await client.post("/Observation/$validate", json=parameters(obs, BODYWEIGHT))
    assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid"
    assert r.json() == expected
    # A profile asked for that cannot be resolved: an error, never "valid".
    r = await client.post("/$validate", json=parameters(obs, "http://example.org/no-such-profile"))
    assert r.status_code == 200 and r.headers["x-validation-result"] == "invalid"
    assert any(i["severity"] == "error" and i["code"] == "not-found" for i in r.json()["issue"])
    # The repeated key inside the Parameters' resource is the resource's own finding.
    body = (
        b'{"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": ' + REPEATED + b"}]}"
    )
    r = await client.post("/$validate", content=body, headers=FHIR)
    assert r.headers["x-validation-result"] == "invalid" and "fs1304" in codes(r.json())


async def test_metadata(client: httpx.AsyncClient) -> None:
    r = await client.get("/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    assert [o["name"] for o in cs["rest"][0]["operation"]] == ["validate"]


async def test_convert_results_over_http(client: httpx.AsyncClient) -> None:
    from tests.services.test_gateway import sd_from_core

    sds = [sd_from_core("bodyweight"), sd_from_core("heartrate")]
    r = await client.post("/convert/batch", json=sds)
    assert r.status_code == 202 and r.json()["results"] == f"/convert/results/{r.json()['job']}"
    job = r.json()["job"]
    r = await client.get(f"/convert/results/{job}", params={"wait": 30})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [orjson.loads(line) for line in r.text.splitlines()]
    assert [row["index"] for row in rows] == [0, 1]
    assert [row["schema"]["url"] for row in rows] == [sd["url"] for sd in sds]
    assert (await client.get("/convert/results/nope")).status_code == 404
