"""Reload without restart: what a running service may change safely, on SIGHUP or when its
config file changes.

`Reloads` is a service's registry of reload callbacks, one or more per settings section: a
bootstrap registers what it can apply (`reloads.on(LogSettings, apply)`); the callback gets the
section as newly read. Only the section's `reloadable` fields are applied; a changed field that is
not reloadable is logged as needing a restart and keeps its running value. `ConfigWatcher` (started
by the entry point) re-reads the configuration — same flags and environment, the file as it is
now — and hands the changes to the registry. A file that no longer reads leaves everything as it
was, with an error naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import watchfiles

from fhirschema_bus.config import ConfigError, LoadedConfig, Section

log = logging.getLogger("fhirschema.reload")
S = TypeVar("S", bound=Section)
Callback = Callable[[Any], Awaitable[None] | None]


def events_of(path: Path) -> Callable[[watchfiles.Change, str], bool]:
    """A watchfiles filter for one file in a watched folder: the file's own events and those of a
    Kubernetes ConfigMap / Secret update (the `..data` symlink and `..<timestamp>` folder beside
    it). Other files there (a log, say) wake nothing: no re-read, no 'changes detected' line."""
    name = path.name

    def wanted(_change: watchfiles.Change, changed: str) -> bool:
        base = os.path.basename(changed)
        return base == name or base.startswith("..")

    return wanted


@dataclass
class ReloadReport:
    applied: dict[str, list[str]] = field(default_factory=dict)  # section -> fields applied
    restart_only: list[str] = field(default_factory=list)  # "section.field" changed, not applied
    error: str | None = None


class Reloads:
    """Reload callbacks per settings section."""

    def __init__(self) -> None:
        self._callbacks: dict[type[Section], list[Callback]] = {}
        self._every: list[Callable[[], object]] = []

    def on(self, model: type[S], callback: Callable[[S], Awaitable[None] | None]) -> None:
        self._callbacks.setdefault(model, []).append(cast(Callback, callback))

    def every_time(self, callback: Callable[[], object]) -> None:
        """`callback` runs on every reload, changed settings or not: what lives outside the
        configuration (the gateway's API key file) is re-read on SIGHUP too."""
        self._every.append(callback)

    def handles(self, model: type[Section]) -> bool:
        return bool(self._callbacks.get(model))

    async def apply(self, current: LoadedConfig, fresh: LoadedConfig) -> ReloadReport:
        """Apply the reloadable changes from `current` to `fresh`; `current` is updated to what
        now runs."""
        report = ReloadReport()
        for every in self._every:
            await _run(every)
        for model, old in list(current.sections.items()):
            new = fresh.sections.get(model)
            if new is None:
                continue
            changed = [f for f in model.model_fields if getattr(old, f) != getattr(new, f)]
            live = [f for f in changed if f in model.reloadable]
            report.restart_only += [f"{model.section}.{f}" for f in changed if f not in model.reloadable]
            if not live:
                continue
            running = old.model_copy(update={f: getattr(new, f) for f in live})
            for callback in self._callbacks.get(model, []):
                await _run(callback, running, section=model.section)
            current.sections[model] = running
            report.applied[model.section] = live
        if report.restart_only:
            log.warning("configuration changed that applies only after a restart: %s",
                        ", ".join(report.restart_only))  # fmt: skip
        if report.applied:
            log.info("configuration reloaded: %s", "; ".join(
                f"{section}: {', '.join(fields)}" for section, fields in report.applied.items()))  # fmt: skip
        return report


async def _run(callback: Callable[..., object], *args: Any, section: str = "") -> None:
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception as e:  # one failed callback must not stop the others
        log.error("reloading [%s] failed in %s: %s", section or "-",
                  getattr(callback, "__qualname__", callback), e)  # fmt: skip


class ConfigWatcher:
    """Re-reads `current`'s configuration on SIGHUP and on a change of its file."""

    def __init__(self, current: LoadedConfig, reloads: Reloads, *, debounce_ms: int = 200) -> None:
        self.current = current
        self.reloads = reloads
        self.debounce_ms = debounce_ms
        self._lock = asyncio.Lock()
        self._digest = self._file_digest()

    def _file_digest(self) -> bytes | None:
        path = self.current.layers.file
        try:
            return hashlib.sha256(path.read_bytes()).digest() if path is not None else None
        except OSError:
            return None

    async def reload(self) -> ReloadReport:
        async with self._lock:
            self._digest = self._file_digest()
            try:
                fresh = self.current.config.read(self.current.layers)
            except ConfigError as e:
                log.error("configuration not reloaded, the running one is kept: %s", e)
                return ReloadReport(error=str(e))
            return await self.reloads.apply(self.current, fresh)

    async def _watch_file(self) -> None:
        path = self.current.layers.file
        if path is None:
            return
        # The folder, not the file: editors and Kubernetes ConfigMap updates replace the file.
        async for _ in watchfiles.awatch(
            path.parent, debounce=self.debounce_ms, recursive=False, watch_filter=events_of(path)
        ):
            if self._file_digest() != self._digest:
                await self.reload()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[ReloadReport]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload())
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = loop.create_task(self._watch_file(), name="config-watch")
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
