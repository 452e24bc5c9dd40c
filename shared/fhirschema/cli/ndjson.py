"""NDJSON input for `fhirschema validate`: a file as runs of whole lines (`Lines`, ~1 MB each).

The reader reads each block once, to find the line ends; the lines are sliced out of the block by
whoever validates the run. A forked worker is sent a run's byte range only and reads the bytes from
the file itself, so no input goes through the pipes (a pipe as input: the run keeps its bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

RUN_BYTES = 1 << 20  # a run: a unit of work (~130 resources of 7.6 kB); 4 MB: slower to slice

# One input: (source, its JSON text), or (path, None) for a file the worker reads itself.
# A plain tuple: one is made per NDJSON line, and a frozen dataclass costs ~1 µs to make.
Item = tuple[str, bytes | None]


@dataclass(frozen=True)
class Lines:
    """Whole lines of an NDJSON file: its bytes [start, start + size), the first numbered `first`.
    `data` starts with those bytes when this process has read them; a run sent to a worker
    carries no data when the file can be read again (`reread`): the worker reads it."""

    path: str
    start: int
    size: int
    first: int
    data: bytes | None = None
    reread: bool = True

    def __reduce__(self) -> tuple[type[Lines], tuple[str, int, int, int, bytes | None, bool]]:
        # sent to a worker (pickled): the byte range only when the worker can read the file
        data = None if self.reread else self.data
        return Lines, (self.path, self.start, self.size, self.first, data, self.reread)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            return handle.read(self.size)

    def items(self, data: bytes) -> Iterator[Item]:
        """The run's lines that are not blank, "path:number" each, without the line end."""
        path = self.path
        for number, line in self.numbered(data):
            yield f"{path}:{number}", line

    def numbered(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The run's lines that are not blank, with their numbers, without the line end."""
        find, end = data.find, min(self.size, len(data))
        start, number = 0, self.first
        while start < end:
            stop = find(b"\n", start, end)
            if stop < 0:
                stop = end
            line = data[start:stop]
            if line and not line.isspace():  # isspace() stops at the first other byte
                # without its line end: a fault's position is on this line
                yield number, line.rstrip(b"\r") if line.endswith(b"\r") else line
            start, number = stop + 1, number + 1


def runs(path: str, handle: BinaryIO) -> Iterator[Lines]:
    """An NDJSON file as runs of whole lines of about RUN_BYTES, each block read once here.
    Sliced line by line afterwards: iterating the file (readline) and stripping copied every line
    three times, ~8 us of the ~50 us a 7.6 kB resource costs."""
    seekable = handle.seekable()
    start, first = 0, 1
    pieces: list[bytes] = []  # a line longer than a block so far (or a tail, unseekable)
    while block := handle.read(RUN_BYTES):
        cut = block.rfind(b"\n") + 1
        if not cut:
            pieces.append(block)
            continue
        if pieces:
            cut += sum(len(p) for p in pieces)
            block = b"".join([*pieces, block])
            pieces = []
        yield Lines(path, start, cut, first, block, seekable)
        start, first = start + cut, first + _count_lines(block, cut)
        if cut < len(block):  # the start of the next line: read again with the next block
            if seekable:
                handle.seek(start)
            else:
                pieces.append(block[cut:])
    if pieces:  # the last line, without a line end
        block = b"".join(pieces)
        yield Lines(path, start, len(block), first, block, seekable)


def _count_lines(data: bytes, end: int) -> int:
    # find() in a loop: ~10x faster than data.count(b"\n") on lines of a few kB
    find, n, at = data.find, 0, data.find(b"\n", 0, end)
    while at >= 0:
        n += 1
        at = find(b"\n", at + 1, end)
    return n
