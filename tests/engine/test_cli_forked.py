"""fhirschema.cli.forked: units worked in forked processes, results in input order, failures told."""

from __future__ import annotations

import mmap
import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from fhirschema.cli import forked

_LANES = mmap.mmap(-1, 8 * 7)  # shared with the forked workers: the unit that holds each lane


def _hold_lane(unit: tuple[int, float], lane: int) -> tuple[int, int, bool]:
    number, seconds = unit
    _LANES[lane * 8 : lane * 8 + 8] = number.to_bytes(8, "little")
    time.sleep(seconds)
    mine = int.from_bytes(_LANES[lane * 8 : lane * 8 + 8], "little") == number
    return number * number, os.getpid(), mine


def test_results_come_in_input_order_and_a_lane_is_a_units_own() -> None:
    rng = random.Random(7)
    units = [(n, rng.choice((0.0, 0.001, 0.01))) for n in range(60)]
    results, pids = [], set()
    for n, (lane, (square, pid, mine)) in enumerate(forked.ordered(_hold_lane, units, 3, 7)):
        assert mine, "another unit wrote into this unit's lane while it was worked"
        assert 0 <= lane < 7 and int.from_bytes(_LANES[lane * 8 : lane * 8 + 8], "little") == n
        results.append(square)
        pids.add(pid)
    assert results == [n * n for n in range(60)]
    assert len(pids) == 3 and os.getpid() not in pids


def test_large_units_and_results_go_through_the_pipes() -> None:
    # frames that queue in a busy worker's pipe and frames that wait for an idle one, results
    # larger than a pipe: no deadlock
    for size in (30_000, 300_000, 700_000, 3_000_000):
        units = [bytes([n]) * (size + n) for n in range(8)]
        out = [r for _, r in forked.ordered(lambda unit, lane: unit * 2, units, 2, 5)]
        assert out == [u * 2 for u in units]
    read, write = os.pipe()
    assert forked._pipe_room(write) >= 4096
    os.close(read)
    os.close(write)


def test_this_process_works_units_too_between_the_workers_results() -> None:
    rng = random.Random(11)
    units = [(n, rng.choice((0.0, 0.001, 0.005))) for n in range(80)]
    results, pids = [], []
    here = lambda unit, lane, tick: _hold_lane(unit, lane)  # noqa: E731
    for n, (lane, (square, pid, mine)) in enumerate(forked.ordered(_hold_lane, units, 1, 7, here, 2)):
        assert mine, "another unit wrote into this unit's lane while it was worked"
        assert 0 <= lane < 7 and int.from_bytes(_LANES[lane * 8 : lane * 8 + 8], "little") == n
        results.append(square)
        pids.append(pid)
    assert results == [n * n for n in range(80)]
    assert len(set(pids)) == 2 and os.getpid() in pids, "the units were not shared with the worker"
    assert pids[-1] == os.getpid(), "the last unit went to a worker: this process would wait for it idle"
    with pytest.raises(ValueError, match="unit 3 is bad"):  # a failure here ends the workers too
        list(
            forked.ordered(
                lambda unit, lane: unit, range(10), 1, 5, lambda u, lane, tick: _fail_on_three(u, lane), 1
            )
        )
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _stamp(unit: int, lane: int) -> tuple[int, int, float]:
    return unit, os.getpid(), time.monotonic()


def test_a_long_unit_here_keeps_the_workers_fed_through_its_ticks() -> None:
    long: list[float] = []

    def here(unit: int, lane: int, tick: Callable[[], None]) -> tuple[int, int, float]:
        if not long:  # the first unit done here takes 0.3 s, looking after the workers meanwhile
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                tick()
                time.sleep(0.005)
            long.append(end)
        return _stamp(unit, lane)

    out = [r for _, r in forked.ordered(_stamp, range(40), 1, 7, here, 2)]
    assert [unit for unit, _, _ in out] == list(range(40))
    during = [unit for unit, pid, at in out if pid != os.getpid() and at < long[0]]
    # a queue of 2 without ticks; with them, as many as the lanes allow (7, one of them here's)
    assert len(during) >= 5, during


def _fail_on_three(unit: int, lane: int) -> int:
    if unit == 3:
        raise ValueError(f"unit {unit} is bad")
    return unit


def test_an_exception_in_a_worker_is_raised_in_the_parent_and_the_workers_end() -> None:
    with pytest.raises(ValueError, match="unit 3 is bad"):
        list(forked.ordered(_fail_on_three, range(10), 2, 5))
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no worker left behind


def _die_on_three(unit: int, lane: int) -> int:
    if unit == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return unit


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    started = time.monotonic()
    with pytest.raises(forked.WorkerDied, match="was killed by SIGKILL before its work was done"):
        list(forked.ordered(_die_on_three, range(10), 2, 5))
    assert time.monotonic() - started < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _slow_here(unit: int, lane: int, tick: Callable[[], None]) -> int:
    for _ in range(5):  # a unit of this process's own, looking after the workers meanwhile
        time.sleep(0.002)
        tick()
    return unit


def test_a_worker_that_dies_while_this_process_works_too_is_an_error_within_2_s() -> None:
    started = time.monotonic()
    with pytest.raises(forked.WorkerDied, match="was killed by SIGKILL before its work was done"):
        list(forked.ordered(_die_on_three, range(10_000), 1, 9, _slow_here, 4))
    assert time.monotonic() - started < 2
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_ctrl_c_while_this_process_works_ends_the_workers() -> None:
    def interrupted(unit: int, lane: int, tick: Callable[[], None]) -> int:
        if unit > 20:
            raise KeyboardInterrupt
        return _slow_here(unit, lane, tick)

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(forked.ordered(lambda unit, lane: unit, range(10_000), 1, 9, interrupted, 4))
    assert time.monotonic() - started < 2
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_the_consumer_stopping_early_ends_the_workers() -> None:
    results = forked.ordered(lambda unit, lane: unit, range(1000), 2, 5)
    assert next(results)[1] == 0
    results.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
