"""Bulk validation for `fhirschema validate`: inputs in chunks, validated in this process or in
forked worker processes (`fhirschema.cli.forked`), written in input order.

An NDJSON file comes as runs of whole lines (`fhirschema.cli.ndjson`): a worker is sent a run's
byte range and reads it itself. A worker's output (encoded lines) comes back through memory shared
with this process, a slot per unit in flight (its lane): through a pipe a unit's output cost the
parent ~4 us per kB (pickled, sent in 64 kB pieces, unpickled), as much as the rest of its work.
Other inputs (JSON files, stdin) go in chunks of items.

Every input becomes one result line, whatever its bytes are (`fhirschema.jsoninput`: input that
is not JSON is an invalid result with a fatal issue); only a file that cannot be read is an I/O
error (reported on stderr, exit 2). The `jobs - 1` workers are forked after this process has
validated for a while, so they start with its loaded packages and warm caches; this process goes
on validating its share of the units between the workers' results (on two CPUs, two busy
processes rather than two and a third that wakes for every result). Memory stays bounded because
at most `2 * LANES_PER_JOB * jobs + 1` units are in flight (the workers' outputs in slots of at
most SLOT_BYTES each).
"""

from __future__ import annotations

import gc
import mmap
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from fhirschema import jsoninput
from fhirschema.cli import forked
from fhirschema.cli.common import read_error
from fhirschema.cli.ndjson import Item, Lines
from fhirschema.cli.outcome import ALL_OK, outcome_json
from fhirschema.validator import ValidationResult, Validator

CHUNK_ITEMS = 256
CHUNK_BYTES = 1 << 20
SERIAL_SECONDS = 0.5  # validate this long in-process before forking: small inputs never fork
SLOT_BYTES = 4 << 20  # a unit's output up to this size comes back through shared memory (else pickled)
# Units in flight per worker: a worker's queue must outlast the parent's turn on a busy machine
# (with 2 per worker, corpus x30 at load 4.5, the two workers waited 0.08-0.60 s of a 2.3-4.4 s
# run for their next unit; with 8, 0.01-0.13 s of 1.1-2.2 s; 16 gave no less)
LANES_PER_JOB = 8
_ALL_OK_TAIL = b'","valid":true,"outcome":' + ALL_OK + b"}\n"  # after a source's last digit


# What is validated as one piece, here or in a worker.
Unit = list[Item] | Lines


@dataclass(frozen=True)
class Done:
    """What a chunk gave: its output, how many results were invalid, the I/O errors."""

    output: bytes
    items: int
    invalid: int
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    validator: Validator
    profiles: tuple[str, ...]
    text: bool  # --format text

    def run(self, unit: Unit) -> Done:
        items: Iterable[Item]
        if isinstance(unit, Lines):
            try:
                block = unit.read()
            except OSError as exc:
                return Done(b"", 0, 0, (read_error(unit.path, exc),))
            if not self.text:
                return self._ndjson_lines(unit, block)
            items = unit.items(block)
        else:
            items = unit
        out: list[bytes] = []
        count = invalid = 0
        errors: list[str] = []
        validate, validator, profiles, text = jsoninput.validate, self.validator, self.profiles, self.text
        for source, data in items:
            count += 1
            if data is None:
                try:
                    data = Path(source).read_bytes()
                except OSError as exc:
                    errors.append(read_error(source, exc))
                    continue
            result = validate(validator, data, profiles)
            valid = result.valid
            if not valid:
                invalid += 1
            out.append(_text(source, result) if text else _ndjson(source, valid, result))
        return Done(b"".join(out), count, invalid, tuple(errors))

    def _ndjson_lines(self, unit: Lines, data: bytes) -> Done:
        """A run of NDJSON lines as NDJSON results, a resource without findings written from
        parts made once per run (the CLI's per-line work outside the engine and the parse)."""
        # A line's source is "<path>:<number>", and JSON escapes neither ':' nor digits: so
        # '{"source":' + orjson.dumps(source) is this head, the number, then '"'.
        head = b'{"source":' + orjson.dumps(unit.path)[:-1] + b":"
        out: list[bytes] = []
        count = invalid = 0
        validate, validator, profiles = jsoninput.validate, self.validator, self.profiles
        compact = True  # the lines are orjson's compact JSON, until one is not (jsoninput.compact_value)
        for number, line in unit.numbered(data):
            value = jsoninput.compact_value(line) if compact else None
            if value is not None:
                result = validator.validate(value, profiles)
            else:  # another form, not JSON, or a repeated key: the rest of the run as any JSON
                compact = False
                result = validate(validator, line, profiles)
            count += 1
            if result.issues:
                valid = result.valid
                invalid += not valid
                out.append(_ndjson(f"{unit.path}:{number}", valid, result))
            else:
                out.append(head + b"%d" % number + _ALL_OK_TAIL)
        return Done(b"".join(out), count, invalid, ())


def _ndjson(source: str, valid: bool, result: ValidationResult) -> bytes:
    # orjson.dumps({"source": ..., "valid": ..., "outcome": ...}), byte for byte, built from parts
    outcome = outcome_json(result)
    middle = b',"valid":true,"outcome":' if valid else b',"valid":false,"outcome":'
    return b'{"source":' + orjson.dumps(source) + middle + outcome + b"}\n"


def _text(source: str, result: ValidationResult) -> bytes:
    lines = [f"{source}: {'valid' if result.valid else 'INVALID'}"]
    for issue in result.issues:
        lines.append(
            f"  {issue.severity:<11} {issue.code:<6} {issue.expression(result.resource_type)}: {issue.message}"
        )
    return ("\n".join(lines) + "\n").encode()


def chunks(inputs: Iterable[Item | Lines]) -> Iterator[Unit]:
    """Items in chunks; a run of lines is a unit of its own."""
    chunk: list[Item] = []
    size = 0
    for item in inputs:
        if isinstance(item, Lines):
            if chunk:
                yield chunk
                chunk, size = [], 0
            yield item
            continue
        chunk.append(item)
        size += len(item[1]) if item[1] is not None else 4096
        if len(chunk) >= CHUNK_ITEMS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def run(task: Task, inputs: Iterable[Item | Lines], jobs: int, emit: Callable[[Done], None]) -> None:
    """Validate every input; `emit` gets each unit's Done in input order."""
    # The loaded packages are ~1M long-lived objects: frozen, no full collection walks them
    # (three paired runs: 9-30% less CPU per resource), and forked workers share their pages.
    gc.collect()
    gc.freeze()
    try:
        pending = chunks(inputs)
        started = time.monotonic()
        for unit in pending:
            emit(task.run(unit))
            if jobs > 1 and time.monotonic() - started >= SERIAL_SECONDS:
                break
        else:
            return
        _parallel(task, pending, jobs, emit)
    finally:
        gc.unfreeze()


_TASK: Task | None = None  # the forked workers' task (inherited, never pickled)
_SLOTS: mmap.mmap | None = None  # the output slots, shared with the forked workers


def _work(unit: Unit, slot: int) -> tuple[int, Done]:
    """(bytes of output in the slot, the Done without them), or (-1, the Done) when too large."""
    assert _TASK is not None and _SLOTS is not None
    done = _TASK.run(unit)
    size = len(done.output)
    if size > SLOT_BYTES:
        return -1, done
    _SLOTS[slot * SLOT_BYTES : slot * SLOT_BYTES + size] = done.output
    return size, replace(done, output=b"")


TICK_ITEMS = 16  # a unit done here looks after the workers every 16 resources (~1 ms)


@dataclass(frozen=True)
class _TickingLines(Lines):
    """A run of lines validated here: `tick` is called every TICK_ITEMS lines."""

    tick: Callable[[], None] = field(kw_only=True)

    def numbered(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        tick = self.tick
        for n, line in enumerate(super().numbered(data), 1):
            yield line
            if not n % TICK_ITEMS:
                tick()


class _TickingItems(list[Item]):
    """Items validated here: `tick` is called every TICK_ITEMS items."""

    def __init__(self, items: list[Item], tick: Callable[[], None]) -> None:
        super().__init__(items)
        self.tick = tick

    def __iter__(self) -> Iterator[Item]:
        for n, item in enumerate(super().__iter__(), 1):
            yield item
            if not n % TICK_ITEMS:
                self.tick()


def _here(unit: Unit, lane: int, tick: Callable[[], None]) -> tuple[int, Done]:
    """A unit validated in this process (its Done keeps its output), looking after the workers
    between its items: a unit that takes long here (the copy-on-write faults after the fork, a
    turn lost to another process) must not leave them without work."""
    assert _TASK is not None
    if isinstance(unit, Lines):
        ticking: Unit = _TickingLines(
            unit.path, unit.start, unit.size, unit.first, unit.data, unit.reread, tick=tick
        )
    else:
        ticking = _TickingItems(unit, tick)
    return -1, _TASK.run(ticking)


def _parallel(task: Task, pending: Iterator[Unit], jobs: int, emit: Callable[[Done], None]) -> None:
    global _TASK, _SLOTS
    _TASK = task
    # this process validates too, between the `jobs - 1` workers' results (forked.ordered's
    # `here`); a worker holds up to LANES_PER_JOB units, and this process's units done meanwhile
    # wait for theirs (input order): ~twice as many in flight as the workers hold
    lanes = 2 * LANES_PER_JOB * jobs + 1
    # MAP_SHARED and anonymous: the workers forked below write into the same pages (only the
    # pages written are ever allocated)
    _SLOTS = slots = mmap.mmap(-1, lanes * SLOT_BYTES)
    gc.freeze()  # and the caches warmed since: shared with the workers, untouched by their collections
    try:
        # a run of lines sent to a worker is its byte range only (ndjson.Lines pickles so)
        results = forked.ordered(_work, pending, jobs - 1, lanes, _here, LANES_PER_JOB)
        for slot, (size, done) in results:
            if size >= 0:
                done = replace(done, output=slots[slot * SLOT_BYTES : slot * SLOT_BYTES + size])
            emit(done)
    finally:
        _TASK = _SLOTS = None
        slots.close()


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
