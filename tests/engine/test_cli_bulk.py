"""fhirschema.cli.bulk: chunks validated here or in forked workers, results in input order."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import orjson
import pytest

from fhirschema import jsoninput
from fhirschema.cli import bulk, forked, ndjson, validate
from fhirschema.context import FhirContext
from fhirschema.validator import Validator
from tests.conftest import EXAMPLES, PACKAGES


@pytest.fixture(scope="module")
def task() -> bulk.Task:
    ctx = FhirContext.from_specs([PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"], with_dependencies=False)
    return bulk.Task(Validator(ctx), (), False)


def _items(tmp_path: Path) -> list[bulk.Item]:
    files = sorted((EXAMPLES / "r4-spec").glob("Observation-*.json"))[:40]
    items: list[bulk.Item] = [
        (f"line:{n}", orjson.dumps(orjson.loads(p.read_bytes()))) for n, p in enumerate(files)
    ]
    items += [("broken", b'{"resourceType": "Patient",'), (str(tmp_path / "missing.json"), None)]
    return items + [(str(p), None) for p in files[:7]]


def _collect(task: bulk.Task, items: list[bulk.Item] | list[ndjson.Lines], jobs: int) -> list[bulk.Done]:
    done: list[bulk.Done] = []
    bulk.run(task, items, jobs, done.append)
    return done


def test_workers_give_the_same_lines_in_the_same_order(
    task: bulk.Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ITEMS", 5)
    items = _items(tmp_path)
    serial = _collect(task, items, 1)
    used: list[int] = []
    parallel = bulk._parallel
    monkeypatch.setattr(bulk, "SERIAL_SECONDS", 0.0)
    monkeypatch.setattr(bulk, "_parallel", lambda *a: (used.append(1), parallel(*a)))
    two = _collect(task, items, 2)
    assert used, "the workers were not used"
    assert b"".join(d.output for d in two) == b"".join(d.output for d in serial)
    assert [(d.items, d.invalid, d.errors) for d in two] == [(d.items, d.invalid, d.errors) for d in serial]
    out = [orjson.loads(line) for line in b"".join(d.output for d in serial).splitlines()]
    assert len(out) == len(items) - 1  # the missing file is an I/O error, not a result
    assert [x["source"] for x in out][40:42] == [
        "broken",
        str(sorted((EXAMPLES / "r4-spec").glob("Observation-*.json"))[0]),
    ]
    assert sum(d.invalid for d in serial) >= 1
    assert [e for d in serial for e in d.errors] == [f"{tmp_path / 'missing.json'}: no such file"]


def test_a_line_is_what_orjson_makes_of_the_result(task: bulk.Task) -> None:
    for data in (b'{"resourceType": "Patient"}', b'{"resourceType": "Patient", "gender": 1}', b"[", b'"x"'):
        [done] = _collect(task, [("s", data)], 1)
        result = jsoninput.validate(task.validator, data)
        assert (
            done.output
            == orjson.dumps({"source": "s", "valid": result.valid, "outcome": result.to_outcome()}) + b"\n"
        )


def test_a_run_of_compact_lines_still_finds_a_repeated_key(task: bulk.Task, tmp_path: Path) -> None:
    # compact lines take jsoninput.compact_value; a repeated key, a line in another form and one
    # that is not JSON are results as from jsoninput.validate, in any order
    compact = [
        orjson.dumps(orjson.loads(p.read_bytes()))
        for p in sorted((EXAMPLES / "r4-spec").glob("Patient-*.json"))[:3]
    ]
    odd = [
        b'{"resourceType":"Patient","gender":"male","gender":"female"}',
        b'{"resourceType": "Patient"}',
        b"{",
    ]
    for data in ([*compact, *odd, *compact], [*odd, *compact], [compact[0], odd[0], compact[1]]):
        path = tmp_path / "lines.ndjson"
        path.write_bytes(b"\n".join(data) + b"\n")
        with open(path, "rb") as handle:
            [run] = ndjson.runs(str(path), handle)
        expected = b"".join(
            orjson.dumps({"source": f"{path}:{n}", "valid": r.valid, "outcome": r.to_outcome()}) + b"\n"
            for n, r in enumerate((jsoninput.validate(task.validator, line) for line in data), 1)
        )
        assert task.run(run).output == expected
        assert b"fs1304" in expected


class _Unseekable(io.BytesIO):
    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_ndjson_runs_of_lines_are_the_lines_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    # blank and whitespace-only lines skipped but counted, CRLF and stray CRs, a line longer than
    # the block, a last line without its newline
    data = b'{"a":1}\r\n\n  \t\n{"b":[1,2,3]}\n\r\n{"c":"' + b"x" * 200 + b'"}\r\r\n \n{"d":{}}'
    monkeypatch.setattr(ndjson, "RUN_BYTES", block)
    for text in (data, data + b"\n", data + b"\n\n", b"", b"\n", b"{}"):
        path = tmp_path / "x.ndjson"
        path.write_bytes(text)
        with path.open("rb") as handle:  # what iterating over the file gives, stripped
            expected = [
                (f"{path}:{n}", line.rstrip(b"\r\n")) for n, line in enumerate(handle, 1) if line.strip()
            ]
        runs = list(validate._inputs([str(path)], {"errors": 0}))
        assert all(isinstance(run, ndjson.Lines) for run in runs)
        assert [item for run in runs for item in run.items(run.read())] == expected
        # a worker's copy (pickled): the byte range only, read from the file
        shipped = [pickle.loads(pickle.dumps(run)) for run in runs]
        assert all(isinstance(run, ndjson.Lines) and run.data is None for run in shipped)
        assert [item for run in shipped for item in run.items(run.read())] == expected
        # a file that cannot be read again (a pipe): the runs keep their bytes
        unseekable = list(ndjson.runs(str(path), _Unseekable(text)))
        assert [pickle.loads(pickle.dumps(run)) for run in unseekable] == unseekable
        assert [item for run in unseekable for item in run.items(run.read())] == expected


def test_workers_read_their_runs_of_lines_from_the_file(
    task: bulk.Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted((EXAMPLES / "r4-spec").glob("Observation-*.json"))[:30]
    path = tmp_path / "many.ndjson"
    path.write_bytes(
        b"\n".join(orjson.dumps(orjson.loads(p.read_bytes())) for p in files)
        + b'\n\n{"resourceType": "Patient",\n{"resourceType": "Patient", "a": 1, "a": 2}'
    )
    monkeypatch.setattr(ndjson, "RUN_BYTES", 4096)  # runs of one to a few lines
    with path.open("rb") as handle:
        runs = list(ndjson.runs(str(path), handle))
    serial = _collect(task, runs, 1)
    sent: list[bulk.Unit] = []
    frame = forked._frame  # what the parent sends a worker (and a worker its results)
    monkeypatch.setattr(bulk, "SERIAL_SECONDS", 0.0)
    monkeypatch.setattr(
        forked, "_frame", lambda unit: sent.append(pickle.loads(pickle.dumps(unit))) or frame(unit)
    )
    two = _collect(task, runs, 2)
    assert len(sent) >= 5 and all(isinstance(u, ndjson.Lines) and u.data is None for u in sent)
    assert len(sent) < len(runs), "this process validated none of the runs itself"
    assert b"".join(d.output for d in two) == b"".join(d.output for d in serial)
    monkeypatch.setattr(bulk, "SLOT_BYTES", 2000)  # outputs larger than a slot: through the pipe
    assert b"".join(d.output for d in _collect(task, runs, 2)) == b"".join(d.output for d in serial)
    out = [orjson.loads(line) for line in b"".join(d.output for d in serial).splitlines()]
    assert [x["source"] for x in out] == [f"{path}:{n}" for n in [*range(1, 31), 32, 33]]
    assert [x["valid"] for x in out[-2:]] == [False, False]
    assert "fs1304" in str(out[-1]["outcome"])


def test_a_unit_done_here_looks_after_the_workers_between_its_items(task: bulk.Task, tmp_path: Path) -> None:
    files = sorted((EXAMPLES / "r4-spec").glob("Observation-*.json"))[:40]
    lines = [orjson.dumps(orjson.loads(p.read_bytes())) for p in files]
    path = tmp_path / "many.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with path.open("rb") as handle:
        [run] = list(ndjson.runs(str(path), handle))
    items = [(f"line:{n}", line) for n, line in enumerate(lines)]
    ticks: list[int] = []
    bulk._TASK = task
    try:
        for unit in (run, items):
            ticks.clear()
            assert bulk._here(unit, 0, lambda: ticks.append(1)) == (-1, task.run(unit))
            assert len(ticks) == 40 // bulk.TICK_ITEMS
    finally:
        bulk._TASK = None
