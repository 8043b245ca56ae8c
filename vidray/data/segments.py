"""Ingest's stages, one video file at a time: plain functions that Ray only wires.

    source_entry ─> probe_entry ─> plan_segments ─> pack_segments ─> ingest_task
                                                    (one shard a task; each segment's
                                                     rows: window_rows.segment_rows)
    source_entry ─> pack_files ─> probe_and_ingest_task (short files: the probe in
                                  the decode task, `vidray.data.ingest` saves a pass)

A segment is a run of at most ``ingest.segment_windows`` windows of one video,
so a long film is spread over many tasks. A task is the segments of ONE split
that fill about ``ingest.shard_mb`` (estimated from the stored frame size and
codecs, `window_bytes`), and it writes them all into ONE shard: Kinetics-400 is
then ~1,000 files, not one per video (~240,000), and an epoch opens few files.

Why the task is the shard (and not part-files merged later, or one long-lived
writer per split): a shard is still written whole by one process, as before, so
everything the manifest relies on holds without a merge step or an actor to
recover: the shard appears atomically (temp file, then rename) and then its task
records all its segments in ONE journal file; a task killed mid-shard leaves no
shard and no record, and only its own segments are redone. The price is the
unit of redoing: a killed task redoes its shard's videos (up to ``shard_mb`` of
work), and a task runs longer (at least two tasks a CPU keep a small dataset
spread over every core, `tasks_per_split`). A shard's name is a hash of its
segments' keys, so Ray retrying a task finds the shard it wrote and its record.

A bad file becomes an ``error`` with the reason, never an exception that stops
the job (the windows it gave before the error stay in the shard); any other
failure is a bug and raises with its traceback, leaving nothing written.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import av
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
# ... and about its segment: where it sits in the video's plan, and its key (the video's
# version and the segment's number), which names it in the journal.
SEGMENT_FIELDS = ("segment", "segments", "first_window", "max_windows", "key")
# Stored bytes of a pixel, as a fraction of its raw uint8 size: JPEG at the default
# quality keeps ~1/8 of a frame, ~1/16 of smooth quantised flow; zstd-1 halves raw
# flow. Only to size shards: a shard ends up within a factor ~2 of ingest.shard_mb.
_STORED_FRACTION = {("frames", "raw"): 1.0, ("frames", "jpeg"): 1 / 8}
_STORED_FRACTION |= {("flow", "raw"): 1 / 2, ("flow", "jpeg"): 1 / 16}
# Shard bytes of a byte of source video, to size the shard of files not yet probed: a
# 10 s Kinetics clip (~1-3 MB) gives ~3 MB of JPEG frames and raw flow at the defaults.
_STORED_PER_SOURCE = 2.0


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
    """Segment keys of one version of a file: a changed file's segments get new keys, so
    a record of its earlier version is never taken for one of the new."""
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
            key=f"{prefix}-{s:04d}",
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
            key=f"{prefix}-{s:04d}",
        )
        for s, first in enumerate(firsts)
    ]


def window_bytes(segment: dict[str, Any], ingest: IngestConfig, flow: FlowConfig) -> float:
    """About how many bytes one window of a segment takes in a shard: its stored frame
    size (``ingest.short_side``) times the frames and flow fields, by codec."""
    width, height = decode.output_size(
        segment["width"], segment["height"], ingest.short_side, ingest.max_upscale
    )
    frames = ingest.window_frames * width * height * 3
    size = frames * _STORED_FRACTION[("frames", ingest.frames_codec)]
    if flow.backend != "none":
        fields = (ingest.window_frames - 1) * width * height * 2
        size += fields * _STORED_FRACTION[("flow", flow.codec)]
    return size


def pack_segments(
    segments: list[dict[str, Any]],
    *,
    windows_per_task: int,
    bytes_per_task: float = math.inf,
    bytes_of: Callable[[dict[str, Any]], float] | None = None,
) -> list[list[dict[str, Any]]]:
    """Group segments into tasks, each of ONE split (a shard holds one split), of about
    ``windows_per_task`` windows and at most ``bytes_per_task`` (a segment weighs
    ``bytes_of(segment)`` a window); a segment bigger than that is a task alone.

    A Ray task costs ~20 ms of CPU and a little more of wall time; a short clip
    (a UCF101 video is two or three windows) is cheaper than that to ingest, so
    one task per clip spent more on scheduling than on video.
    """
    tasks: list[list[dict[str, Any]]] = []
    by_split: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for segment in segments:
        by_split[segment.get("split")].append(segment)
    for split_segments in by_split.values():
        current: list[dict[str, Any]] = []
        windows = weight = 0.0
        for segment in split_segments:
            more = segment["windows"] * (bytes_of(segment) if bytes_of else 0.0)
            if current and (
                windows + segment["windows"] > windows_per_task or weight + more > bytes_per_task
            ):
                tasks.append(current)
                current, windows, weight = [], 0.0, 0.0
            current.append(segment)
            windows += segment["windows"]
            weight += more
        if current:
            tasks.append(current)
    return tasks


def pack_files(
    entries: list[dict[str, Any]], *, files_per_task: int, bytes_per_task: float
) -> list[list[dict[str, Any]]]:
    """Group unprobed files into tasks of one split, of at most ``files_per_task`` files
    and about ``bytes_per_task`` of shard, guessed from their sizes (`_STORED_PER_SOURCE`).
    """
    return pack_segments(
        [dict(entry, windows=1) for entry in entries],
        windows_per_task=files_per_task,
        bytes_per_task=bytes_per_task,
        bytes_of=lambda entry: entry["size"] * _STORED_PER_SOURCE,
    )


def probe_and_ingest_task(
    task: dict[str, Any],
    *,
    ingest: IngestConfig,
    flow: FlowConfig,
    output: str,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Stages 1 and 2 in one task, for short files: probe each, plan its segments and
    ingest them all into the task's shard (`ingest_task`). A file the probe refuses
    gives a record of no windows with the reason, not journaled (the next run probes
    it again), so the driver gets journal records only, as from `ingest_task`."""
    segments: list[dict[str, Any]] = []
    refused = []
    for entry in task["files"]:
        probed = probe_entry({k: v for k, v in entry.items() if k != "windows"})
        if probed["error"]:
            place = dict(segment=0, segments=1, first_window=0, max_windows=-1)
            key = f"{shard_prefix(probed)}-0000"
            refused.append(
                {
                    **_recorded_fields(dict(probed, **place, key=key)),
                    **dict(n_windows=0, padded=0, error=probed["error"], shard="", bytes=0),
                }
            )
        else:
            segments.extend(plan_segments(probed, ingest))
    if not segments:
        return refused
    records = ingest_task(
        {"segments": segments}, ingest=ingest, flow=flow, output=output, progress=progress
    )
    return records + refused


def task_shard(segments: list[dict[str, Any]]) -> str:
    """The shard a task writes: its split, and a hash of its segments, so the same task
    (Ray retrying it) finds its shard again and another task never overwrites it."""
    # The key says which file version and windows; path and label say what the rows hold.
    keys = "|".join(f"{s['key']}:{s['path']}:{s['label_name']}" for s in segments)
    return f"{segments[0]['split']}-{stable_hash(keys):016x}.parquet"


def ingest_task(
    task: dict[str, Any],
    *,
    ingest: IngestConfig,
    flow: FlowConfig,
    output: str,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Stage 2: decode the windows of a task's segments, compute flow, encode, write them
    all into the task's shard, and record the segments in the journal (one file).

    Returns the segments' journal records: the video's fields, the segment's place,
    windows written, padding, the shard, its share of the shard's bytes, and any
    media error (a file that breaks part-way keeps the windows before the break). Any
    other exception is a bug: it is raised, no shard or record is left. Progress goes
    to ``progress`` (a `vidray.data.progress.IngestProgress` actor) as segments go.
    A task the journal already records (Ray runs a task again after its worker
    died) is not ingested again: its records are returned.
    """
    segments = task["segments"]
    shard = task_shard(segments)
    done = read_journal_record(output, shard)
    if done is not None and _records(done, segments) and shard_in_place(output, done):
        return done
    writer = ShardWriter(storage.join(output, WINDOWS_DIR, shard), tmp_dir=scratch_dir(output))
    try:
        records = [_write_segment(s, writer, ingest, flow, progress) for s in segments]
    except BaseException:
        writer.abort()
        raise
    size = writer.finish() if writer.num_rows else 0
    for record in records:  # the shard's bytes, shared out by windows
        share = record["n_windows"] / max(1, writer.num_rows)
        record.update(shard=shard, bytes=round(size * share))
    # The record is written before the shard appears, so a shard in place is always on
    # record; a task killed between the two leaves a record whose shard is missing,
    # which readers take as not done (`shard_in_place`).
    write_journal_record(output, shard, records)
    if writer.num_rows:
        writer.commit()
    else:
        writer.abort()
    return records


def ingest_segment(
    segment: dict[str, Any], *, ingest: IngestConfig, flow: FlowConfig, output: str
) -> dict[str, Any]:
    """`ingest_task` of one segment alone (its own shard): its journal record."""
    (record,) = ingest_task({"segments": [segment]}, ingest=ingest, flow=flow, output=output)
    return record


def _write_segment(
    segment: dict[str, Any],
    writer: ShardWriter,
    ingest: IngestConfig,
    flow: FlowConfig,
    progress: Any,
) -> dict[str, Any]:
    """One segment's windows into the task's shard; its journal record, shard aside."""
    if progress is not None:
        progress.started.remote(segment["video_id"])
    errors: list[str] = []
    padded = written = 0
    local = None
    try:
        with _local_source(segment["path"]) as local:
            rows = segment_rows(
                dict(segment, path=str(local)), ingest=ingest, flow=flow, errors=errors
            )
            for row in rows:
                writer.add(row)
                written += 1
                padded = max(padded, row["padded"])
                if progress is not None:
                    progress.encoded.remote()
    except _MEDIA_ERRORS as exc:  # the windows before the error are kept
        errors.append(_media_reason(exc, segment["path"], local))
    if progress is not None:
        progress.finished.remote(segment["video_id"], segment["segment"], segment["segments"])
    return {
        **_recorded_fields(segment),
        "n_windows": written,
        "padded": padded,
        "error": "; ".join(errors) or None,
    }


def drop_videos(output: str, shard: str, *, keep: set[str], split: str) -> str:
    """Copy a shard without the windows of videos not in ``keep``, under a new name
    (published whole, like every shard); returns that name. The old shard stays until
    no manifest row names it (an orphan, deleted at the end of the run)."""
    name = f"{split}-{stable_hash('|'.join([shard, *sorted(keep)])):016x}.parquet"
    source = storage.join(output, WINDOWS_DIR, shard)
    writer = ShardWriter(storage.join(output, WINDOWS_DIR, name), tmp_dir=scratch_dir(output))
    try:
        with pq.ParquetFile(storage.open_input(source)) as parquet:
            for batch in parquet.iter_batches(batch_size=64):
                kept = batch.filter(pc.is_in(batch["video_id"], pa.array(sorted(keep))))
                for row in kept.to_pylist():
                    writer.add(row)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return name


def _recorded_fields(segment: dict[str, Any]) -> dict[str, Any]:
    """What a journal record says about its segment and video."""
    return {key: segment.get(key) for key in (*_VIDEO_FIELDS, *SEGMENT_FIELDS)}


def _records(records: list[dict[str, Any]], segments: list[dict[str, Any]]) -> bool:
    """Whether a task's journal records are of these very segments (same files, places
    and labels)."""
    return len(records) == len(segments) and all(
        record.get(key) == value
        for record, segment in zip(records, segments, strict=True)
        for key, value in _recorded_fields(segment).items()
    )


def shard_in_place(output: str, records: list[dict[str, Any]]) -> bool:
    """Whether the shard a task's journal records name is there (a task whose segments
    gave no windows has none)."""
    return not any(r["n_windows"] for r in records) or storage.is_file(
        storage.join(output, WINDOWS_DIR, records[0]["shard"])
    )
