"""The lock that makes an ingest output one run's at a time.

Two runs into one output (or a new run while the tasks of a stopped one still
write) would delete each other's temporary shards, journal and shards. A run
creates ``<output>/_lock`` exclusively before it touches the output, with its
process id and host, and deletes it when it ends, however it ends. A run killed
with ``kill -9`` leaves its lock behind: a later run on the same host whose
process is gone takes it over; any other held lock is refused with one line
that names the file and says to delete it if that run is dead.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from vidray import storage
from vidray.errors import VidrayError

LOCK_FILE = "_lock"


class OutputLock:
    """``with OutputLock(output):`` holds ``<output>/_lock`` for the block.

    Raises:
        VidrayError: another run holds the lock, and is alive or on another host.
    """

    def __init__(self, output: str, *, log: Callable[[str], None] | None = None) -> None:
        self.output = output
        self.log = log or (lambda line: None)
        self.path = storage.join(output, LOCK_FILE)
        self._token = uuid.uuid4().hex

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        storage.makedirs(self.output)
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": self._token,
        }
        holder = None
        for _ in range(3):
            if storage.write_new(self.path, json.dumps(owner).encode()) and self._ours():
                return
            holder = self._holder()
            if holder is None and not storage.is_file(self.path):
                continue  # released meanwhile
            if holder is None or not _dead_here(holder):
                break
            self.log(
                f"ingest: {self.path} was left by process {holder['pid']}, which is gone "
                "(killed?); taking it over"
            )
            storage.remove(self.path)
        raise VidrayError(_held_message(self.output, self.path, holder))

    def release(self) -> None:
        if self._ours():  # never another run's lock, whoever deleted ours meanwhile
            storage.remove(self.path)

    def _holder(self) -> dict[str, Any] | None:
        """What the lock file says about the run holding it, or None if unreadable."""
        try:
            holder = json.loads(storage.read_bytes(self.path))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _ours(self) -> bool:
        holder = self._holder()
        return holder is not None and holder.get("token") == self._token


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether the lock's process ran on this host and is gone."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _held_message(output: str, path: str, holder: dict[str, Any] | None) -> str:
    who = (
        f"run (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
        if holder
        else "run"
    )
    return (
        f"{output} is being ingested by another {who}: wait for it to end, or, if that run "
        f"is dead, delete {path} and run again"
    )
