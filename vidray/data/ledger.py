"""The manifest as an ingest run builds it: the rows of the earlier run, the rows this
run settles, and a video's row folded from the journal records of its segments."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from vidray.config import IngestConfig
from vidray.data import decode


def manifest_row(entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A file's manifest row (`vidray.data.manifest.MANIFEST_SCHEMA`): quarantined with
    no windows, unless ``fields`` say otherwise."""
    row = {
        "path": entry["path"],
        "video_id": entry["video_id"],
        "label": entry["label"],
        "label_name": entry["label_name"],
        "split": entry["split"],
        "status": "quarantined",
        "error": None,
        "n_windows": 0,
        "padded": 0,
        "duration": None,
        "fps": None,
        "width": None,
        "height": None,
        "size": entry["size"],
        "mtime": entry["mtime"],
        "shards": [],
        "shard_windows": [],
    }
    row.update(fields)
    return row


def video_row(records: list[dict[str, Any]], ingest: IngestConfig) -> dict[str, Any]:
    """Fold the journal records of all of a video's segments into its manifest row."""
    records = sorted(records, key=lambda r: r["segment"])
    video = records[0]
    n_windows = sum(r["n_windows"] for r in records)
    notes = [r["error"] for r in records if r["error"]]
    if video.get("problems"):  # annotation rows left out (layout ava)
        notes.append(video["problems"])
    fields = dict(
        duration=video["duration"],
        fps=video["fps"],
        width=video["width"],
        height=video["height"],
        n_windows=n_windows,
        padded=max(r["padded"] for r in records),
        **_shards_of(records),
    )
    if n_windows == 0:
        return manifest_row(video, error="; ".join(notes) or "no windows decoded", **fields)
    small = small_source_note(video["width"], video["height"], ingest)
    error = "; ".join(dict.fromkeys([*notes, *([small] if small else [])])) or None
    return manifest_row(video, status="ok", error=error, **fields)


def _shards_of(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The shards a video's segment records name, in order, and its windows in each."""
    windows: dict[str, int] = {}
    for record in records:
        if record["n_windows"]:
            windows[record["shard"]] = windows.get(record["shard"], 0) + record["n_windows"]
    return {"shards": list(windows), "shard_windows": list(windows.values())}


def small_source_note(width: int, height: int, ingest: IngestConfig) -> str | None:
    """The manifest note of a video stored below ``ingest.short_side``, or None."""
    if not ingest.short_side or not ingest.max_upscale:
        return None
    stored = decode.output_size(width, height, ingest.short_side, ingest.max_upscale)
    if min(stored) >= ingest.short_side:
        return None
    return (
        f"small source ({width}x{height}): stored at {stored[0]}x{stored[1]}, enlarged at most "
        f"ingest.max_upscale={ingest.max_upscale:g} times, not to short side {ingest.short_side}"
    )


def is_complete(records: Iterable[dict[str, Any]]) -> bool:
    """Whether journal records are every segment of one plan of their video: segment
    s starts where s-1 ends, the last is open-ended."""
    records = sorted(records, key=lambda r: r["segment"])
    if not records or [r["segment"] for r in records] != list(range(records[0]["segments"])):
        return False
    return (
        records[0]["first_window"] == 0
        and records[-1]["max_windows"] == -1
        and all(
            a["segments"] == b["segments"]
            and a["first_window"] + a["max_windows"] == b["first_window"]
            for a, b in itertools.pairwise(records)
        )
    )


class Ledger:
    """The manifest as a run builds it: the earlier run's rows, and those this run settles.

    Rows of the earlier run stay unless this run settles the same video again.
    A video that fails now but was ingested before keeps its earlier row (its
    shards too), with the new reason noted; only ``ingest.mode=prune`` deletes a
    video, and only one no longer in the input.
    """

    def __init__(self, previous: list[dict[str, Any]], listed: dict[str, dict[str, Any]]):
        self.previous: dict[str, dict[str, Any]] = {}
        for row in previous:  # a video's row, not that of a second file with its id
            kept = self.previous.get(row["video_id"])
            if kept is None or (kept["status"] != "ok" and row["status"] == "ok"):
                self.previous[row["video_id"]] = row
        self.listed = listed
        self.settled: dict[str, dict[str, Any]] = {}
        self.duplicates: list[dict[str, Any]] = []  # files whose id another file has

    def gone(self) -> list[str]:
        """Ingested videos whose file the input no longer lists, or that is missing."""
        return [
            vid
            for vid, row in self.previous.items()
            if row["status"] == "ok"
            and (vid not in self.listed or self.listed[vid]["size"] is None)
        ]

    def rows(self, *, prune: bool = False) -> list[dict[str, Any]]:
        rows = {
            vid: row
            for vid, row in self.previous.items()
            if row["status"] == "ok" or vid in self.listed
        }
        for vid, row in self.settled.items():
            if row["status"] != "ok" and self.ok_before(vid):
                row = dict(
                    self.previous[vid],
                    error=f"{row['error']}; the windows ingested earlier from this file are kept",
                )
            rows[vid] = row
        for vid in self.gone() if prune else []:
            del rows[vid]
        return [*rows.values(), *self.duplicates]

    def ok_before(self, video_id: str) -> bool:
        """Whether the earlier run ingested the video."""
        row = self.previous.get(video_id)
        return row is not None and row["status"] == "ok"

    def ok_listed(self) -> int:
        return sum(
            1 for row in self.rows() if row["status"] == "ok" and row["video_id"] in self.listed
        )
