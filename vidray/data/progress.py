"""What an ingest run says while it works: a line every few seconds with videos done,
videos in flight, windows encoded and the time so far, however long one task takes."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable


class IngestProgress:
    """What the ingest tasks are doing right now, for the driver's progress lines.

    `vidray.data.ingest.run_ingest` runs it as a Ray actor the tasks tell as they go (Ray Data hands
    the driver a task's results only some time after it ends); it is a plain
    object otherwise. ``segments``: video_id -> how many of its segments the run
    ingests, or None for all of its plan (a task that probes the file itself says
    how many that is).
    """

    def __init__(self, segments: dict[str, int | None]) -> None:
        self._segments = dict(segments)
        self._finished: dict[str, set[int]] = defaultdict(set)  # a retried task counts once
        self._running: Counter = Counter()  # video_id -> its segments being ingested
        self._done = 0
        self._windows = 0

    def started(self, video_id: str) -> None:
        self._running[video_id] += 1

    def encoded(self, windows: int = 1) -> None:
        self._windows += windows

    def finished(self, video_id: str, segment: int, of: int) -> None:
        """Segment ``segment`` of the ``of`` of the video's plan is done."""
        self._running[video_id] -= 1
        if self._running[video_id] <= 0:
            del self._running[video_id]
        finished = self._finished[video_id]
        if segment not in finished:
            finished.add(segment)
            self._done += len(finished) == (self._segments.get(video_id) or of)

    def snapshot(self) -> dict[str, int]:
        """Videos done, of ``total``, videos being ingested, windows encoded so far."""
        return {
            "done": self._done,
            "total": len(self._segments),
            "running": len(self._running),
            "windows": self._windows,
        }


class Heartbeat:
    """Logs ``line()`` every ``every`` seconds on a thread while the ``with`` block runs,
    so a long task never leaves the user looking at the same line for minutes."""

    def __init__(self, line: Callable[[], str], log: Callable[[str], None], every: float):
        self._line, self._log, self._every = line, log, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ingest-progress", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            self._log(self._line())


def progress_line(*, done: int, total: int, running: int, windows: int, seconds: float) -> str:
    rate = windows / seconds if seconds > 0 else 0.0
    minutes, secs = divmod(int(seconds), 60)
    return (
        f"ingest: {done}/{total} videos done, {running} in flight, {windows} windows "
        f"({rate:.1f}/s), {minutes}m{secs:02d}s elapsed"
    )
