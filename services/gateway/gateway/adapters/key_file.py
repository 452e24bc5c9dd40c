"""The API key file (FHIRSCHEMA_API_KEYS_FILE): read at start, re-read when it changes and on
SIGHUP. A file that no longer reads keeps the keys in force, with an error in the log naming the
line: a typo while editing must not lock everyone out, nor let anyone in."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import watchfiles

from fhirschema_bus import tasks
from fhirschema_bus.reload import events_of
from gateway.service.auth import ApiKeys, KeyFileError

log = logging.getLogger("gateway.auth")


class KeyFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest: bytes | None = None
        self.keys = self._read()  # a file that cannot be read stops the gateway at start
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> ApiKeys:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise KeyFileError(f"API key file {self.path} cannot be read: {e.strerror or e}") from e
        keys = ApiKeys.parse(data.decode("utf-8", errors="replace"), str(self.path))
        self._digest = hashlib.sha256(data).digest()
        return keys

    def reload(self) -> bool:
        """Re-read the file; True when the keys in force changed."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            log.error("API key file %s cannot be read, the keys in force are kept: %s", self.path, e)
            return False
        if hashlib.sha256(data).digest() == self._digest:
            return False
        try:
            self.keys = self._read()
        except KeyFileError as e:
            log.error("API keys not reloaded, the keys in force are kept: %s", e)
            return False
        log.info("API keys reloaded from %s: %d keys", self.path, len(self.keys))
        return True

    async def _watch(self) -> None:
        # The folder, not the file: editors replace files, and a mounted Kubernetes Secret
        # changes by swapping a symlink beside it. Also once a second without an event (the
        # digest compared, a cheap read): a change before the watch began, or on a filesystem
        # that sends no events, is not missed. Only the file's events count (events_of): another
        # file written in that folder re-read the keys and logged a line each time.
        async for _ in watchfiles.awatch(
            self.path.parent, debounce=200, recursive=False, rust_timeout=1000, yield_on_timeout=True,
            watch_filter=events_of(self.path),
        ):  # fmt: skip
            self.reload()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="api-key-file")

    async def stop(self) -> None:
        await tasks.stop(self._task)  # re-cancels: a cancel during a NATS request can be swallowed
        self._task = None
