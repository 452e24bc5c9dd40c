"""The parity suite's parts (issue 9 §3), shared by tests/services/test_parity.py and
bench/parity.py: the shared corpora, what `fhirschema validate` says about them, and what the
service says through POST /validate, POST /validate/batch and WS /validate/stream.

Each corpus is validated in its package context: the service is asked with `?package=<spec>`,
the CLI with `--package <spec>.tgz` (dependencies from the .tgz files beside it, an empty package
cache so nothing else is found) — the same packages on both sides. Outcomes are compared whole:
`valid` and every issue (severity, code, diagnostics, expression, line/column).

The CLI is run as a process on the very bytes the service gets: the example files for the
sync and WebSocket paths, and an NDJSON file of the same items for the batch (a file's newlines
replaced by spaces: the same JSON, repeated keys included).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from tests.conftest import EXAMPLES, PACKAGES

CORE = "hl7.fhir.r4.core#4.0.1"
PACKAGE_FILES = sorted(p.name.removesuffix(".tgz") for p in PACKAGES.glob("*.tgz"))
R4_SAMPLE_EVERY = 7  # make test: every 7th R4 spec example (sorted by name); bench/parity.py: all
SYNTHEA_SAMPLE_LINES = 8  # per NDJSON file in make test


@dataclass(frozen=True)
class Item:
    source: str  # file name, or file:line
    data: bytes  # the JSON text as sent


@dataclass(frozen=True)
class Corpus:
    name: str
    package: str  # the package context, name#version
    items: tuple[Item, ...]


def corpora(full: bool = False) -> list[Corpus]:
    """R4 spec examples, every IG's examples under ../shared/fhir/examples, a Synthea sample."""
    out: list[Corpus] = []
    r4 = sorted((EXAMPLES / "r4-spec").glob("*.json"))
    out.append(Corpus("r4-spec", CORE, _files(r4 if full else r4[::R4_SAMPLE_EVERY])))
    for folder in sorted(EXAMPLES.iterdir()):
        if "#" in folder.name and folder.is_dir():
            out.append(Corpus(folder.name, folder.name, _files(sorted(folder.glob("*.json")))))
    lines: list[Item] = []
    for f in sorted((EXAMPLES / "synthea-bulk-10-patients").glob("*.ndjson")):
        if f.name == "log.ndjson":
            continue
        rows = [row for row in f.read_bytes().splitlines() if row.strip()]
        for n, row in enumerate(rows if full else rows[:SYNTHEA_SAMPLE_LINES], start=1):
            lines.append(Item(f"{f.name}:{n}", row))
    out.append(Corpus("synthea", CORE, tuple(lines)))
    return out


def _files(paths: Sequence[Path]) -> tuple[Item, ...]:
    return tuple(Item(p.name, p.read_bytes()) for p in paths)


def one_line(data: bytes) -> bytes:
    """The same JSON on one line (raw newlines cannot be inside a JSON string)."""
    return data.replace(b"\r", b" ").replace(b"\n", b" ")


Verdict = tuple[bool, Any]  # (valid, OperationOutcome)


# --- the CLI ------------------------------------------------------------------------------------


def cli(corpus: Corpus, workdir: Path, *, batch: bool = False, packages: Path = PACKAGES) -> list[Verdict]:
    """`fhirschema validate --package <tgz>` over the corpus' items: as files (one per item), or
    (batch) one NDJSON file of them; the package and its dependencies from the folder `packages`.
    Verdicts in input order."""
    workdir.mkdir(parents=True, exist_ok=True)
    if batch:
        path = workdir / f"{corpus.name}.ndjson"
        path.write_bytes(b"\n".join(one_line(i.data) for i in corpus.items) + b"\n")
        paths = [path]
    else:
        paths = []
        for n, item in enumerate(corpus.items):
            path = workdir / f"{n:05d}.json"
            path.write_bytes(item.data)
            paths.append(path)
    cache = workdir / "empty-cache"
    cache.mkdir(exist_ok=True)
    exe = Path(sys.executable).with_name("fhirschema")
    cmd = [str(exe), "validate", "--cache", str(cache), "--package", str(packages / f"{corpus.package}.tgz")]
    proc = subprocess.run(
        [*cmd, *map(str, paths)],
        capture_output=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=1800,
    )
    assert proc.returncode in (0, 1), proc.stderr.decode()[-3000:]
    lines = [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(corpus.items), (len(lines), len(corpus.items), proc.stderr.decode()[-2000:])
    return [(bool(r["valid"]), r["outcome"]) for r in lines]


# --- the service --------------------------------------------------------------------------------

FHIR = {"content-type": "application/fhir+json"}


async def via_sync(client: httpx.AsyncClient, corpus: Corpus, concurrency: int = 8) -> list[Verdict]:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> Verdict:
        async with gate:
            r = await client.post(
                "/validate",
                content=item.data,
                headers=FHIR,
                params={"package": corpus.package, "timeout": 120},
            )
        assert r.status_code == 200, (item.source, r.status_code, r.text[:2000])
        verdict = r.headers["x-validation-result"]
        assert verdict in ("valid", "invalid"), (item.source, verdict, r.text[:2000])
        return verdict == "valid", r.json()

    return list(await asyncio.gather(*(one(i) for i in corpus.items)))


async def via_batch(client: httpx.AsyncClient, corpus: Corpus, timeout: float = 600.0) -> list[Verdict]:
    body = b"\n".join(one_line(i.data) for i in corpus.items) + b"\n"
    r = await client.post(
        "/validate/batch",
        content=body,
        headers={"content-type": "application/x-ndjson"},
        params={"package": corpus.package},
    )
    assert r.status_code == 202, r.text[:2000]
    job = r.json()["job"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = (await client.get(f"/validate/status/{job}")).json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        assert loop.time() < deadline, status
        await asyncio.sleep(0.2)
    assert status["state"] == "succeeded" and status["failed"] == 0, status
    lines = (await client.get(f"/validate/results/{job}", params={"wait": 10})).content.splitlines()
    results = sorted((orjson.loads(line) for line in lines if line.strip()), key=lambda x: x["index"])
    assert [x["index"] for x in results] == list(range(len(corpus.items))), len(results)
    return [(bool(x["valid"]), x["outcome"]) for x in results]


async def via_ws(ws_url: str, corpus: Corpus, timeout: float = 600.0) -> list[Verdict]:
    got: dict[int, Verdict] = {}
    url = f"{ws_url}/validate/stream?package={corpus.package.replace('#', '%23')}"
    async with websockets.connect(url, max_size=None) as ws:
        for item in corpus.items:
            await ws.send(item.data.decode())
        while len(got) < len(corpus.items):
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
            assert "valid" in frame, frame
            got[frame["index"]] = (bool(frame["valid"]), frame["outcome"])
    return [got[n] for n in range(len(corpus.items))]


# --- comparison ---------------------------------------------------------------------------------


def differences(corpus: Corpus, expected: list[Verdict], got: list[Verdict], path: str) -> list[str]:
    """One line per item whose verdict or outcome differs (issues, severities, locations)."""
    out = []
    for item, (ev, eo), (gv, go) in zip(corpus.items, expected, got, strict=True):
        if ev != gv or eo != go:
            want = {(i.get("severity"), i.get("code"), i.get("diagnostics")) for i in eo.get("issue", [])}
            have = {(i.get("severity"), i.get("code"), i.get("diagnostics")) for i in go.get("issue", [])}
            out.append(
                f"{path} {corpus.name}/{item.source}: CLI valid={ev}, service valid={gv}; "
                f"only CLI: {sorted(want - have, key=str)[:3]}; only service: {sorted(have - want, key=str)[:3]}"
            )
    return out
