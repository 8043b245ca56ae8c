"""Ingest's stages, one video file at a time: plain functions that Ray only wires.

    source_entry ─> probe_entry ─> plan_segments ─> pack_segments ─> ingest_task
                                                       (each segment: ingest_segment,
                                                        its rows: window_rows)

A segment is a run of at most ``ingest.segment_windows`` windows of one video,
so a long film is spread over many tasks and no task holds more than one
window of frames at a time; short clips are packed several to a task. Every
segment writes its own shard atomically and then records itself in the
journal (`vidray.data.manifest`). A bad file becomes an ``error`` with the
reason, never an exception that stops the job; any other failure is a bug and
raises with its traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import av

from vidray import storage
from vidray.config import FlowConfig, IngestConfig
from vidray.data import decode
from vidray.data.manifest import (
    TMP_DIR,
    WINDOWS_DIR,
    read_journal_record,
    write_journal_record,
)
from vidray.data.shards import ShardWriter
from vidray.data.sources import SourceEntry, stable_hash, video_key
from vidray.data.window_rows import segment_rows
from vidray.errors import VideoError

# What a user's file can make the decoder raise. Anything else is a bug in vidray.
_MEDIA_ERRORS = (VideoError, av.FFmpegError)
# What a task's journal record carries about its video, to make its manifest row.
_VIDEO_FIELDS = (
    "path",
    "video_id",
    "label",
    "label_name",
    "split",
    "size",
    "mtime",
    "duration",
    "fps",
    "width",
    "height",
    "problems",
)
# ... and about its segment: where it sits in the video's plan.
SEGMENT_FIELDS = ("segment", "segments", "first_window", "max_windows", "shard")


def scratch_dir(output: str) -> Path:
    """Where a task writes a shard before it is published: inside a local output (the
    rename is then atomic), or in the local temp dir for an object store."""
    if not storage.is_uri(output):
        return Path(output) / TMP_DIR
    return Path(tempfile.gettempdir()) / f"vidray-ingest-{stable_hash(output):016x}"


def _media_reason(error: Exception, *names: str | Path | None) -> str:
    """A media error's one line without the file's name (the source's, or for a file in
    an object store that of its local temporary copy): the manifest row has the path."""
    reason = str(error)
    for name in names:
        if name is not None:
            reason = reason.removeprefix(f"{name}: ")
    return reason


def _cannot_read(error: OSError) -> str:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot read the file ({first})"


@contextlib.contextmanager
def _local_source(path: str) -> Iterator[Path]:
    """``storage.local_file(path)``, where a file that cannot be fetched (deleted since it
    was listed, access denied) is a VideoError, quarantined like any unreadable file."""
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(storage.local_file(path))
        except OSError as exc:
            raise VideoError(f"{path}: {_cannot_read(exc)}") from exc
        yield local


def source_entry(source: SourceEntry) -> dict[str, Any]:
    """A listed file as the stages carry it: its listing fields, and its size and mtime
    now (None when it is gone), which tell a changed file from one already ingested."""
    try:
        size, mtime = storage.stat(source.path) or (None, None)
    except OSError as exc:  # an object store that denies access: quarantined, not a crash
        return dict(
            asdict(source),
            size=None,
            mtime=None,
            error=source.error or _cannot_read(exc),
        )
    return dict(asdict(source), size=size, mtime=mtime)


def probe_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: probe one file. Adds its VideoInfo fields, or ``error`` when unreadable."""
    out = dict(entry, duration=None, fps=None, width=None, height=None, num_frames=None)
    local = None
    try:
        with _local_source(entry["path"]) as local:
            info = decode.probe(local)
    except _MEDIA_ERRORS as exc:
        out["error"] = _media_reason(exc, entry["path"], local)
        return out
    out.update(
        duration=info.duration,
        fps=info.fps,
        width=info.width,
        height=info.height,
        num_frames=info.num_frames,
    )
    return out


def shard_prefix(probed: dict[str, Any]) -> str:
    """Shard names of one version of a file: a changed file gets new names, so its new
    shards never overwrite the ones the manifest names until its new row replaces them."""
    version = stable_hash(f"{probed['size']}:{probed['mtime']!r}") % 2**32
    return f"{video_key(probed['video_id']):016x}-{version:08x}"


def plan_segments(probed: dict[str, Any], ingest: IngestConfig) -> list[dict[str, Any]]:
    """Split one probed video into segments of at most ``segment_windows`` windows.

    The last segment is open-ended (``max_windows=-1``): when the probe
    underestimates the length, the remaining windows still land somewhere.
    A video with keyframes (layout ava) is split by its keyframes instead.
    """
    if probed.get("keyframes"):
        return _keyframe_segments(probed, ingest)
    grid_frames = decode.grid_frame_count(
        probed["duration"], ingest.fps, start_sec=probed["start_sec"], end_sec=probed["end_sec"]
    )
    n_windows = max(
        1,
        decode.count_windows(
            grid_frames, window_frames=ingest.window_frames, window_stride=ingest.window_stride
        ),
    )
    n_segments = math.ceil(n_windows / ingest.segment_windows)
    prefix = shard_prefix(probed)
    return [
        dict(
            probed,
            segment=s,
            segments=n_segments,
            first_window=s * ingest.segment_windows,
            max_windows=ingest.segment_windows if s < n_segments - 1 else -1,
            windows=min(ingest.segment_windows, n_windows - s * ingest.segment_windows),
            shard=f"{prefix}-{s:04d}.parquet",
        )
        for s in range(n_segments)
    ]


def _keyframe_segments(probed: dict[str, Any], ingest: IngestConfig) -> list[dict[str, Any]]:
    """Segments of at most ``segment_windows`` keyframes, one window each."""
    keyframes = json.loads(probed["keyframes"])
    per = ingest.segment_windows
    prefix = shard_prefix(probed)
    firsts = range(0, len(keyframes), per)
    return [
        dict(
            probed,
            keyframes=json.dumps(keyframes[first : first + per]),
            segment=s,
            segments=len(firsts),
            first_window=first,
            max_windows=per if s < len(firsts) - 1 else -1,
            windows=len(keyframes[first : first + per]),
            shard=f"{prefix}-{s:04d}.parquet",
        )
        for s, first in enumerate(firsts)
    ]


def pack_segments(
    segments: list[dict[str, Any]], *, windows_per_task: int
) -> list[list[dict[str, Any]]]:
    """Group consecutive segments into tasks of about ``windows_per_task`` windows.

    A Ray task costs ~20 ms of CPU and a little more of wall time; a short clip
    (a UCF101 video is two or three windows) is cheaper than that to ingest, so
    one task per clip spent more on scheduling than on video.
    """
    tasks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    load = 0
    for segment in segments:
        if current and load + segment["windows"] > windows_per_task:
            tasks.append(current)
            current, load = [], 0
        current.append(segment)
        load += segment["windows"]
    if current:
        tasks.append(current)
    return tasks


def ingest_task(
    task: dict[str, Any],
    *,
    ingest: IngestConfig,
    flow: FlowConfig,
    output: str,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Stage 2 as Ray runs it: the segments of one task, one after the other, told to
    ``progress`` (a `vidray.data.progress.IngestProgress` actor) as they go."""
    results = []
    for segment in task["segments"]:
        if progress is None:
            results.append(ingest_segment(segment, ingest=ingest, flow=flow, output=output))
            continue
        progress.started.remote(segment["video_id"])
        try:
            results.append(
                ingest_segment(
                    segment,
                    ingest=ingest,
                    flow=flow,
                    output=output,
                    on_window=progress.encoded.remote,
                )
            )
        finally:
            progress.finished.remote(segment["video_id"], segment["segment"])
    return results


def ingest_segment(
    segment: dict[str, Any],
    *,
    ingest: IngestConfig,
    flow: FlowConfig,
    output: str,
    on_window: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Stage 2: decode one segment's windows, compute flow, encode, write its shard, and
    record the segment in the journal.

    Returns the journal record: the video's fields, the segment's place, windows
    written, padding, shard size, and any media error (a file that breaks part-way
    keeps the windows before the break). Any other exception is a bug: it is
    raised, no shard or record is left. ``on_window`` is called after each window.
    A segment the journal already records (Ray runs a task again after its worker
    died) is not ingested again: its record is returned.
    """
    done = read_journal_record(output, segment["shard"])
    if done is not None and _records(done, segment) and shard_in_place(output, done):
        return done
    writer = ShardWriter(
        storage.join(output, WINDOWS_DIR, segment["shard"]), tmp_dir=scratch_dir(output)
    )
    errors: list[str] = []
    padded = 0
    local = None
    try:
        with _local_source(segment["path"]) as local:
            rows = segment_rows(
                dict(segment, path=str(local)), ingest=ingest, flow=flow, errors=errors
            )
            for row in rows:
                writer.add(row)
                padded = max(padded, row["padded"])
                if on_window is not None:
                    on_window()
    except _MEDIA_ERRORS as exc:  # the windows before the error are kept
        errors.append(_media_reason(exc, segment["path"], local))
    except BaseException:
        writer.abort()
        raise
    size = 0
    if writer.num_rows:
        size = writer.commit()
    else:
        writer.abort()
    record = {
        **_recorded_fields(segment),
        "n_windows": writer.num_rows,
        "padded": padded,
        "bytes": size,
        "error": "; ".join(errors) or None,
    }
    write_journal_record(output, record)
    return record


def _recorded_fields(segment: dict[str, Any]) -> dict[str, Any]:
    """What a journal record says about its segment and video."""
    return {key: segment.get(key) for key in (*_VIDEO_FIELDS, *SEGMENT_FIELDS)}


def _records(record: dict[str, Any], segment: dict[str, Any]) -> bool:
    """Whether a journal record is of this very segment (same file, place and labels)."""
    return all(record.get(key) == value for key, value in _recorded_fields(segment).items())


def shard_in_place(output: str, record: dict[str, Any]) -> bool:
    """Whether the shard a journal record names is there (a segment with no windows has
    none)."""
    return record["n_windows"] == 0 or storage.is_file(
        storage.join(output, WINDOWS_DIR, record["shard"])
    )
