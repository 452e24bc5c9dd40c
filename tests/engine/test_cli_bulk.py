"""fhirschema.cli.bulk: chunks validated here or in forked workers, results in input order."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fhirschema import jsoninput
from fhirschema.cli import bulk, validate
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


def _collect(task: bulk.Task, items: list[bulk.Item], jobs: int) -> list[bulk.Done]:
    done: list[bulk.Done] = []
    bulk.run(task, items, jobs, done.append)
    return done


def test_workers_give_the_same_lines_in_the_same_order(
    task: bulk.Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ITEMS", 5)
    items = _items(tmp_path)
    serial = _collect(task, items, 1)
    forked: list[int] = []
    parallel = bulk._parallel
    monkeypatch.setattr(bulk, "SERIAL_SECONDS", 0.0)
    monkeypatch.setattr(bulk, "_parallel", lambda *a: (forked.append(1), parallel(*a)))
    two = _collect(task, items, 2)
    assert forked, "the workers were not used"
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


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_ndjson_lines_read_in_blocks_are_the_lines_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    # blank and whitespace-only lines skipped but counted, CRLF and stray CRs, a line longer than
    # the block, a last line without its newline
    data = b'{"a":1}\r\n\n  \t\n{"b":[1,2,3]}\n\r\n{"c":"' + b"x" * 200 + b'"}\r\r\n \n{"d":{}}'
    for text in (data, data + b"\n", data + b"\n\n", b"", b"\n", b"{}"):
        path = tmp_path / "x.ndjson"
        path.write_bytes(text)
        with path.open("rb") as handle:  # what iterating over the file gave, stripped
            expected = [
                (f"{path}:{n}", line.rstrip(b"\r\n")) for n, line in enumerate(handle, 1) if line.strip()
            ]
        monkeypatch.setattr(validate, "LINE_BLOCK", block)
        assert list(validate._inputs([str(path)], {"errors": 0})) == expected
