"""Services as child processes (`python -m <module>`), for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def start_service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run `python -m module` with `env`, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
