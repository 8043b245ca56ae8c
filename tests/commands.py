"""Running vidray the way a user or a Ray job does: ``python -m <module>`` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# How Ray prefixes a line it forwards from a worker to the driver: "(pid=7)" or
# "(TrainController pid=7)", maybe in colour, maybe with the node's address.
RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\([\w.:-]*\s?pid=")
# Ray's node daemon warning that the machine's disk is nearly full: true of the shared
# machine the suite runs on, said whatever command runs, and none of the command's words.
DISK_NEARLY_FULL = re.compile(r"^(\x1b\[\d+m)?\(raylet\)(\x1b\[0m)? .* file_system_monitor\.cc:")


def machine_warning(line: str) -> bool:
    """Whether ``line`` is Ray's warning about the machine rather than the command's."""
    return bool(DISK_NEARLY_FULL.match(line))


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT: Ctrl-C at its default,
    as a shell gives it, whatever disposition this long-lived test process holds (a child
    inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def own_lines(text: str) -> list[str]:
    """The lines of a command's output that are its own: the session's Ray forwards its
    workers' lines (earlier tests' too) to this process whenever they arrive."""
    return [
        line
        for line in text.strip().splitlines()
        if not (RAY_WORKER_LINE.match(line) or machine_warning(line))
    ]


def run_module(
    module: str,
    *args: str,
    cwd: Path = REPO,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m module args...`` with this checkout importable (and ``env`` added to
    the environment); output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
