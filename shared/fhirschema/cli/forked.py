"""Forked worker processes for `fhirschema.cli.bulk`, fed through a pipe each, results in order.

Why not `multiprocessing.Pool`: its task and result threads, queue locks and a pickled job and
result per unit cost the parent CPU on the same two CPUs as the workers (for the cli_bench corpus
x30, 211 units: 0.175-0.207 s of parent CPU with the Pool, ~0.1 s of it in its threads; 0.138-0.144
s here), and a worker that dies (killed, out of memory) left the Pool waiting forever. Here a unit
goes to one worker through its own pipe as one pickled frame and its result comes back the same
way; the parent waits for any worker with `poll` (or, working units itself, looks between
them), and has no threads. A worker that ends early is an error (`WorkerDied`).

A busy worker is sent more units only while all it has been sent fits in its task pipe (asked
for 1 MB; a run of lines is a byte range, ~150 bytes pickled): the parent never blocks writing to
a worker that is itself blocked writing a large result back. A worker with queued units never
waits for the parent (on a loaded machine the parent's turn can come late).
"""

from __future__ import annotations

import fcntl
import os
import pickle
import select
import signal
import struct
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct("<Q")  # a frame: its length, then the pickle
LANE = struct.Struct("<Q")  # a unit's frame comes after its lane
PIPE_BYTES = 1 << 20  # asked for a task pipe (the default 64 kB holds ~16 chunks of file paths)


_NONE = object()


class WorkerDied(RuntimeError):
    pass


@dataclass
class _Worker:
    pid: int
    tasks: int  # the parent writes units here
    results: int  # and reads results here
    room: int  # what its task pipe holds
    units: deque[tuple[int, int]] = field(default_factory=deque)  # (index, frame bytes) sent, in order
    queued: int = 0  # bytes of the frames sent whose results have not come back (an upper bound)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read(fd: int, size: int) -> bytes | None:
    """Exactly `size` bytes, or None at the end of the pipe."""
    parts: list[bytes] = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def _receive(fd: int) -> Any:
    header = _read(fd, HEADER.size)
    if header is None:
        raise EOFError
    data = _read(fd, HEADER.unpack(header)[0])
    if data is None:
        raise EOFError
    return pickle.loads(data)


def _serve(work: Callable[[Any, int], Any], tasks: int, results: int) -> None:
    """A worker's life: (lane, unit) frames in, (True, result) or (False, exception) out."""
    # Ctrl-C reaches the whole process group: the parent decides, and closes the pipes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        lane = _read(tasks, LANE.size)
        if lane is None:
            return
        unit = _receive(tasks)
        try:
            reply = _frame((True, work(unit, LANE.unpack(lane)[0])))
        except Exception as exc:  # a bug in the work: raised again in the parent, with its trace
            try:
                reply = _frame((False, exc))
            except Exception:
                reply = _frame((False, RuntimeError(traceback.format_exc())))
        _write(results, reply)


def _pipe_room(fd: int) -> int:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # over /proc/sys/fs/pipe-max-size or the user's pipe budget: what it has
        pass
    return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))


def _start(jobs: int, work: Callable[[Any, int], Any]) -> list[_Worker]:
    workers: list[_Worker] = []
    for _ in range(jobs):
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns (os._exit skips the parent's buffers and atexit)
            code = 0
            try:
                for fd in (task_write, result_read, *(f for w in workers for f in (w.tasks, w.results))):
                    os.close(fd)  # an earlier worker's task pipe must see its end when the parent closes it
                _serve(work, task_read, result_write)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(task_read)
        os.close(result_write)
        workers.append(_Worker(pid, task_write, result_read, _pipe_room(task_write)))
    return workers


def _death(pid: int) -> str:
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    return f"a worker process {how} before its work was done (out of memory?); try fewer --jobs"


def _stop(workers: list[_Worker], failed: bool) -> None:
    for worker in workers:
        os.close(worker.tasks)  # the end of its units: it exits
        if failed:  # it may be mid-unit or blocked writing: do not wait for it
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for worker in workers:
        os.close(worker.results)
        try:
            os.waitpid(worker.pid, 0)
        except ChildProcessError:  # reaped already: the one that died
            pass


class _Flight:
    """The parent's side of `ordered`: the units taken ahead, those sent, their results."""

    def __init__(self, workers: list[_Worker], units: Iterable[Any], lanes: int, queue: int, here: bool):
        self.workers = workers
        self.by_fd = {w.results: w for w in workers}
        self.poller = select.poll()
        for worker in workers:
            self.poller.register(worker.results, select.POLLIN)
        self.free = list(range(lanes))
        self.flight: deque[tuple[int, int]] = deque()  # (index, lane) in input order
        self.done: dict[int, Any] = {}
        self.pending = iter(units)
        # units taken from `pending`, not sent yet; with `here`, `queue` + 1 of them, so that the
        # last few are seen coming and shared out (a worker left with a full queue at the end
        # would be working alone)
        self.ahead: deque[Any] = deque()
        self.look = queue + 1 if here else 1
        self.queue = queue if here else 0  # 0: no limit but the lanes and the pipes
        self.ahead_frame = b""  # ahead[0]'s frame, once made
        self.exhausted = False
        self.index = 0

    def send(self) -> None:
        """Units to the workers while there are lanes and they take them."""
        free, ahead = self.free, self.ahead
        while free:
            while not self.exhausted and len(ahead) < self.look:
                unit = next(self.pending, _NONE)
                if unit is _NONE:
                    self.exhausted = True
                else:
                    ahead.append(unit)
            if not ahead:
                return
            worker = min(self.workers, key=lambda w: len(w.units))
            if self.queue and len(worker.units) >= min(self.queue, len(ahead) - 1):
                return  # the workers hold enough (or the rest is done here): the next is done here
            self.ahead_frame = self.ahead_frame or _frame(ahead[0])
            size = LANE.size + len(self.ahead_frame)
            if worker.units and worker.queued + size > worker.room:
                return  # it waits for an idle worker: a write to a busy one must not block
            lane = free.pop()
            try:
                _write(worker.tasks, LANE.pack(lane) + self.ahead_frame)
            except BrokenPipeError:
                raise WorkerDied(_death(worker.pid)) from None
            worker.units.append((self.index, size))
            worker.queued += size
            self.flight.append((self.index, lane))
            self.index += 1
            ahead.popleft()
            self.ahead_frame = b""

    def take(self) -> tuple[int, Any, int]:
        """The next unit for this process: (its index, it, its lane)."""
        lane = self.free.pop()
        index = self.index
        self.index += 1
        self.flight.append((index, lane))
        self.ahead_frame = b""
        return index, self.ahead.popleft(), lane

    def receive(self, timeout: int | None) -> None:
        """The results that have come (waiting for one unless `timeout` is 0)."""
        for fd, _event in self.poller.poll(timeout):
            worker = self.by_fd[fd]
            try:
                ok, value = _receive(fd)
            except EOFError:
                raise WorkerDied(_death(worker.pid)) from None
            if not ok:
                raise value
            unit, size = worker.units.popleft()
            worker.queued -= size
            self.done[unit] = value

    def tick(self) -> None:
        """Between the items of a unit done here: the workers' results taken, more units sent."""
        self.receive(0)
        self.send()


def ordered(
    work: Callable[[Any, int], Any],
    units: Iterable[Any],
    jobs: int,
    lanes: int,
    here: Callable[[Any, int, Callable[[], None]], Any] | None = None,
    queue: int = 0,
) -> Iterator[Any]:
    """`work(unit, lane)` for every unit in `jobs` forked processes; yields (lane, result) in
    input order. At most `lanes` units are in flight; a unit's lane (0..lanes-1) is its own until
    its result has been taken (the next one is asked for): a place for its output that nobody
    else writes.

    With `here`, this process works too: a worker is sent units while it holds fewer than
    `queue` (and, at the end, fewer than are left), and the next unit is `here(unit, lane, tick)`,
    done in this process; `here` calls `tick()` now and then (between items: every ~1 ms), which
    takes the workers' results and sends them more, so a long unit here does not leave them
    idle. Up to `queue` + 1 units are taken from `units` ahead. On two CPUs that is two processes
    busy instead of a third waking for every result: no CPU goes to switching between them, and
    this process's share of the units is neither sent, read again nor copied back."""
    workers = _start(jobs, work)
    state = _Flight(workers, units, lanes, queue, here is not None)
    flight, done, free = state.flight, state.done, state.free
    failed = True
    try:
        while True:
            # the results in order first: their lanes are free for the units sent next
            while flight and flight[0][0] in done:
                first, lane = flight.popleft()
                yield lane, done.pop(first)
                free.append(lane)
            state.send()
            busy_here = here is not None and bool(free) and bool(state.ahead)
            if busy_here:
                assert here is not None
                index, unit, lane = state.take()
                done[index] = here(unit, lane, state.tick)
            elif not flight:  # every lane free, so every worker idle: nothing was left to send
                failed = False
                return
            state.receive(0 if busy_here else None)
    finally:
        _stop(workers, failed)
