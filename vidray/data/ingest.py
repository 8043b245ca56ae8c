"""Ingest: videos -> windows of frames and optical flow in Parquet shards, on Ray Data.

    check (no Ray, nothing written): config values, an input with videos, an output
        that holds no other dataset
    list sources ─> skip what is done ─> probe (Ray Data, files in batches)
        ─> plan segments ─> pack into tasks ─> decode → flow → encode → shard (Ray Data)
        ─> manifest.parquet + dataset.yaml

A segment is a run of at most ``ingest.segment_windows`` windows of one video,
so a long film is spread over many tasks and no task holds more than one
window of frames at a time; short clips are packed several to a task. Every
segment writes its own shard atomically and then records itself in the
journal (`vidray.data.manifest`): whatever stops the run (Ctrl-C, SIGTERM, a
crash), the next one with the same command does only what no record names.
A bad file becomes a manifest row with the reason, never an exception that
stops the job; any other failure is a bug and stops it with its traceback.
While tasks run, a line every few seconds says how many videos are done and
being ingested and how many windows are encoded (`IngestProgress`, a small
actor the tasks tell as they go), however long one task takes.

An output holds one dataset: the input and layout named in its dataset.yaml.
``ingest.mode`` says what a run does to it: ``add`` ingests new and changed
files and keeps every video it holds, also those no longer in the input (they
are reported); ``prune`` deletes those; ``replace`` deletes the whole dataset
first, and is the only mode that accepts another input or layout. One run at a
time writes to an output: the second is refused while the first holds its lock
(`vidray.data.lock`).

The stage functions (`probe_entry`, `ingest_segment`) are plain functions,
testable without Ray; `run_ingest` only wires them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import shutil
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import av

from vidray import storage
from vidray.config import Config, FlowConfig, IngestConfig
from vidray.data import decode
from vidray.data.lock import OutputLock
from vidray.data.manifest import (
    DATASET_FILE,
    JOURNAL_DIR,
    MANIFEST_FILE,
    STORAGE_KEYS,
    TMP_DIR,
    WINDOWS_DIR,
    check_same_parameters,
    clear_journal,
    read_dataset_info,
    read_journal,
    read_journal_record,
    read_manifest,
    remove_dataset,
    write_dataset_info,
    write_journal_record,
    write_manifest,
)
from vidray.data.shards import ShardWriter, encode_images, video_key
from vidray.data.sources import (
    VIDEO_EXTENSIONS,
    SourceEntry,
    SourceListing,
    has_video_files,
    list_sources,
    split_settings,
)
from vidray.errors import Interrupted, VideoError, VidrayError

# The driver also rewrites the manifest this often, so a resumed run reads few
# journal records; the journal alone already loses nothing.
_MANIFEST_EVERY_S = 30.0
_PROGRESS_EVERY_S = 5.0
# Probing a file takes a few ms: many per task, or scheduling dominates.
_PROBES_PER_TASK = 32
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
_SEGMENT_FIELDS = ("segment", "segments", "first_window", "max_windows", "shard")


@dataclass
class IngestSummary:
    output: str
    listed: int = 0
    ingested: int = 0  # ok in this run
    skipped: int = 0  # ok from an earlier (or an interrupted) run, untouched
    quarantined: int = 0
    windows: int = 0  # written in this run
    bytes: int = 0
    seconds: float = 0.0
    gone: int = 0  # videos in the dataset whose file is no longer in the input
    pruned: bool = False  # ... and were deleted (ingest.mode=prune)
    small: int = 0  # ingested below the short side: ingest.max_upscale capped them
    resumed: int = 0  # segments an interrupted run finished, reused, not ingested again
    reasons: Counter = field(default_factory=Counter)  # why files were quarantined
    # Changed files that now fail: the windows of their earlier version stay, and why.
    kept_earlier: int = 0
    kept_reasons: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.ingested + self.skipped + self.kept_earlier

    def report(self) -> str:
        rate = self.windows / self.seconds if self.seconds > 0 else 0.0
        resumed = f" (with {self.resumed} segments done before)" if self.resumed else ""
        kept = f", {self.kept_earlier} kept at their earlier version" if self.kept_earlier else ""
        lines = [
            f"ingest: {self.ingested} ingested{resumed}, {self.skipped} already done, "
            f"{self.quarantined} quarantined{kept} of {self.listed} files",
            f"ingest: {self.windows} windows, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
            f"({rate:.1f} windows/s) -> {self.output}",
        ]
        if self.gone and self.pruned:
            lines.append(
                f"ingest: {self.gone} videos no longer in the input were deleted from the "
                "dataset (ingest.mode=prune)"
            )
        elif self.gone:
            lines.append(
                f"ingest: {self.gone} videos in the dataset are no longer in the input; kept "
                "(ingest.mode=prune deletes them)"
            )
        if self.small:
            lines.append(
                f"ingest: {self.small} videos are smaller than the short side and were enlarged "
                "only up to ingest.max_upscale (noted in the manifest)"
            )
        for reason, count in self.reasons.most_common(5):
            lines.append(f"ingest: quarantined {count}x: {reason}")
        for reason, count in self.kept_reasons.most_common(5):
            lines.append(f"ingest: changed, now failing, earlier version kept {count}x: {reason}")
        return "\n".join(lines)


def scratch_dir(output: str) -> Path:
    """Where a task writes a shard before it is published: inside a local output (the
    rename is then atomic), or in the local temp dir for an object store."""
    if not storage.is_uri(output):
        return Path(output) / TMP_DIR
    digest = hashlib.sha1(output.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"vidray-ingest-{digest}"


def _manifest_row(entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
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
    }
    row.update(fields)
    return row


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


# ----------------------------------------------------------------------------- check


@dataclass(frozen=True)
class _Checked:
    """What `check_ingest` found: where things are, what the input lists, and the
    dataset.yaml already in the output (None for a new output)."""

    input: str
    output: str
    listing: SourceListing
    info: dict[str, Any] | None


def check_ingest(cfg: Config) -> None:
    """Find what would make ``vidray ingest`` fail before it does anything, without Ray
    and without writing: the config values, an input that lists at least one video,
    and an output that is new or holds the dataset of the same input and layout
    (unless ``ingest.mode=replace``), ingested with the same storage parameters and
    split settings (``ingest.split``, ``ingest.val_fraction``, ``ingest.test_fraction``).

    Raises:
        VidrayError: one line naming the problem and the fix.
    """
    _check(cfg)


def _check(cfg: Config) -> _Checked:
    _validate(cfg)
    ingest = cfg.ingest
    source = storage.resolve(ingest.input)
    output = storage.resolve(ingest.output)
    if _same_place(source, output):
        raise VidrayError(
            f"ingest.output {output} is the input folder: choose another --output, "
            "e.g. a folder beside it"
        )
    info = None
    if storage.is_file(storage.join(output, DATASET_FILE)):
        info = read_dataset_info(output)
        if ingest.mode != "replace":
            _check_same_dataset(info, source=source, layout=ingest.layout, output=output)
            check_same_parameters(output, info, {**_storage(cfg), **_splits(cfg)})
    listing = list_sources(
        ingest.input,
        layout=ingest.layout,
        split=ingest.split,
        val_fraction=ingest.val_fraction,
        test_fraction=ingest.test_fraction,
        exclude=output,
    )
    if ingest.layout in ("folders", "flat") and not has_video_files(listing):
        raise VidrayError(
            f"input {ingest.input} holds no video files (looked for "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))}): check ingest.input"
        )
    if not listing.entries:
        raise VidrayError(f"input {ingest.input} lists no videos: check ingest.input")
    return _Checked(input=source, output=output, listing=listing, info=info)


def _same_place(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _check_same_dataset(info: dict[str, Any], *, source: str, layout: str, output: str) -> None:
    """Refuse to mix another input or layout into a dataset (ingest.mode=replace may)."""
    stored = str(info.get("input", ""))
    stored_layout = info.get("layout")
    # Outputs written before inputs were stored resolved hold the path as typed.
    same_input = _same_place(stored if storage.is_uri(stored) else storage.resolve(stored), source)
    if same_input and stored_layout == layout:
        return
    raise VidrayError(
        f"{output} holds the dataset of {stored} (layout {stored_layout}), not of {source} "
        f"(layout {layout}): choose another --output, or set ingest.mode=replace to delete "
        "that dataset and start afresh"
    )


# ----------------------------------------------------------------------------- stages


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


def _shard_prefix(probed: dict[str, Any]) -> str:
    """Shard names of one version of a file: a changed file gets new names, so its new
    shards never overwrite the ones the manifest names until its new row replaces them."""
    version = hashlib.blake2b(
        f"{probed['size']}:{probed['mtime']!r}".encode(), digest_size=4
    ).hexdigest()
    return f"{video_key(probed['video_id']):016x}-{version}"


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
    prefix = _shard_prefix(probed)
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
    prefix = _shard_prefix(probed)
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


def _tasks_for(items: int, per_task: int, cpus: float) -> int:
    """Number of tasks: ``per_task`` items each, but enough to keep every CPU busy."""
    return max(1, min(items, max(math.ceil(items / per_task), math.ceil(2 * cpus))))


@functools.lru_cache(maxsize=2)
def _flow_estimator(flow: FlowConfig) -> Callable | None:
    """One estimator per worker process: Ray reuses workers, RAFT loads once."""
    if flow.backend == "none":
        return None
    from vidray.data.flow import load_flow_estimator

    return load_flow_estimator(
        flow.backend,
        dis_preset=flow.dis_preset,
        raft_model=flow.raft_model,
        raft_weights=flow.raft_weights or None,
    )


def encode_window(
    segment: dict[str, Any],
    window: decode.Window,
    *,
    ingest: IngestConfig,
    flow: FlowConfig,
    estimator: Callable | None,
) -> dict[str, Any]:
    """One shard row (the data contract): the window's frames, its flow, where it sits."""
    from vidray.data.flow import quantize_flow

    frames = window.frames
    flow_entries = None
    if estimator is not None:
        quantized = quantize_flow(estimator(frames), flow.bound)
        flow_entries = encode_images(quantized, codec=flow.codec, quality=ingest.jpeg_quality)
    return {
        "video_id": segment["video_id"],
        "video_key": video_key(segment["video_id"]),
        "label": segment["label"],
        "label_name": segment["label_name"],
        "split": segment["split"],
        "window_idx": window.index,
        "start_sec": window.start_sec,
        "fps": ingest.fps,
        "height": frames.shape[1],
        "width": frames.shape[2],
        "padded": window.padded,
        "frames_codec": ingest.frames_codec,
        "frames": encode_images(frames, codec=ingest.frames_codec, quality=ingest.jpeg_quality),
        "flow_codec": flow.codec if estimator is not None else None,
        "flow": flow_entries,
        "flow_bound": flow.bound,
    }


class IngestProgress:
    """What the ingest tasks are doing right now, for the driver's progress lines.

    `run_ingest` runs it as a Ray actor the tasks tell as they go (Ray Data hands
    the driver a task's results only some time after it ends); it is a plain
    object otherwise. ``segments``: video_id -> how many of its segments the run
    ingests.
    """

    def __init__(self, segments: dict[str, int]) -> None:
        self._segments = dict(segments)
        self._finished: dict[str, set[int]] = defaultdict(set)  # a retried task counts once
        self._running: Counter = Counter()  # video_id -> its segments being ingested
        self._done = 0
        self._windows = 0

    def started(self, video_id: str) -> None:
        self._running[video_id] += 1

    def encoded(self, windows: int = 1) -> None:
        self._windows += windows

    def finished(self, video_id: str, segment: int) -> None:
        self._running[video_id] -= 1
        if self._running[video_id] <= 0:
            del self._running[video_id]
        finished = self._finished[video_id]
        if segment not in finished:
            finished.add(segment)
            self._done += len(finished) == self._segments.get(video_id)

    def snapshot(self) -> dict[str, int]:
        """Videos done, of ``total``, videos being ingested, windows encoded so far."""
        return {
            "done": self._done,
            "total": len(self._segments),
            "running": len(self._running),
            "windows": self._windows,
        }


def ingest_task(
    task: dict[str, Any],
    *,
    ingest: IngestConfig,
    flow: FlowConfig,
    output: str,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Stage 2 as Ray runs it: the segments of one task, one after the other, told to
    ``progress`` (an `IngestProgress` actor) as they go."""
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
    if done is not None and _records(done, segment) and _shard_in_place(output, done):
        return done
    import cv2

    # Ray gives each task `cpus_per_task` cores; OpenCV would otherwise use all of them.
    cv2.setNumThreads(max(1, int(ingest.cpus_per_task)))
    estimator = _flow_estimator(flow)
    writer = ShardWriter(
        storage.join(output, WINDOWS_DIR, segment["shard"]), tmp_dir=scratch_dir(output)
    )
    errors: list[str] = []
    padded = 0
    local = None
    try:
        with _local_source(segment["path"]) as local:
            windows = _segment_windows(dict(segment, path=str(local)), ingest=ingest, errors=errors)
            for window, extra in windows:
                row = encode_window(segment, window, ingest=ingest, flow=flow, estimator=estimator)
                writer.add({**row, **extra})
                padded = max(padded, window.padded)
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
    return {key: segment.get(key) for key in (*_VIDEO_FIELDS, *_SEGMENT_FIELDS)}


def _records(record: dict[str, Any], segment: dict[str, Any]) -> bool:
    """Whether a journal record is of this very segment (same file, place and labels)."""
    return all(record.get(key) == value for key, value in _recorded_fields(segment).items())


def _shard_in_place(output: str, record: dict[str, Any]) -> bool:
    return record["n_windows"] == 0 or storage.is_file(
        storage.join(output, WINDOWS_DIR, record["shard"])
    )


def _segment_windows(
    segment: dict[str, Any], *, ingest: IngestConfig, errors: list[str]
) -> Iterator[tuple[decode.Window, dict[str, Any]]]:
    """A segment's windows and each one's extra columns: windows on the regular grid,
    or (layout ava) one centred on each keyframe, with the keyframe's boxes."""
    if not segment.get("keyframes"):
        windows = decode.iter_windows(
            segment["path"],
            fps=ingest.fps,
            short_side=ingest.short_side,
            max_upscale=ingest.max_upscale,
            window_frames=ingest.window_frames,
            window_stride=ingest.window_stride,
            start_sec=segment["start_sec"],
            end_sec=segment["end_sec"],
            first_window=segment["first_window"],
            max_windows=None if segment["max_windows"] < 0 else segment["max_windows"],
            threads=ingest.decode_threads,
            errors=errors,
        )
        for window in windows:
            yield window, {}
        return
    keyframes = json.loads(segment["keyframes"])
    centres = [round((k["sec"] - ingest.ava_time_offset) * ingest.fps) for k in keyframes]
    early = sum(c < 0 for c in centres)
    if early:
        errors.append(
            f"{early} keyframes before the video starts (ingest.ava_time_offset="
            f"{ingest.ava_time_offset:g}): left out"
        )
    written = 0
    windows = decode.iter_keyframe_windows(
        segment["path"],
        centres=centres[early:],
        fps=ingest.fps,
        short_side=ingest.short_side,
        max_upscale=ingest.max_upscale,
        window_frames=ingest.window_frames,
        threads=ingest.decode_threads,
        errors=errors,
    )
    for window in windows:
        keyframe = keyframes[early + window.index]
        written += 1
        yield (
            replace(window, index=segment["first_window"] + early + window.index),
            {
                "keyframe_sec": keyframe["sec"],
                "keyframe_offset": ingest.window_frames // 2,
                "boxes": [v for box in keyframe["boxes"] for v in box],
                "box_actions": keyframe["actions"],
                "person_ids": keyframe["persons"],
                "proposals": [v for box in keyframe.get("proposals", []) for v in box],
                "proposal_scores": keyframe.get("scores", []),
            },
        )
    late = len(keyframes) - early - written
    if late:
        errors.append(
            f"{late} keyframes past the end of the video (ingest.ava_time_offset="
            f"{ingest.ava_time_offset:g}): left out"
        )


def _video_row(records: list[dict[str, Any]], ingest: IngestConfig) -> dict[str, Any]:
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
        shards=[r["shard"] for r in records if r["n_windows"]],
    )
    if n_windows == 0:
        return _manifest_row(video, error="; ".join(notes) or "no windows decoded", **fields)
    small = _small_source_note(video["width"], video["height"], ingest)
    error = "; ".join(dict.fromkeys([*notes, *([small] if small else [])])) or None
    return _manifest_row(video, status="ok", error=error, **fields)


def _small_source_note(width: int, height: int, ingest: IngestConfig) -> str | None:
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


# ----------------------------------------------------------------------------- the run


def _storage(cfg: Config) -> dict[str, Any]:
    flat = cfg.flat()
    return {key: flat[key] for key in STORAGE_KEYS}


def _splits(cfg: Config) -> dict[str, Any]:
    """The settings that put each video in its split, as dataset.yaml records them."""
    return {
        f"ingest.{name}": getattr(cfg.ingest, name) for name in split_settings(cfg.ingest.layout)
    }


class _Ledger:
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


def run_ingest(cfg: Config, *, log: Callable[[str], None] = print) -> IngestSummary:
    """Ingest ``cfg.ingest.input`` into ``cfg.ingest.output``; needs a running Ray.

    Raises:
        VidrayError: what `check_ingest` finds, before anything is written, or
            another run holding the output (`vidray.data.lock`).
        Interrupted: the user stopped it (Ctrl-C, or SIGTERM turned into
            KeyboardInterrupt); every video finished is in the manifest, every
            finished segment of the others in the journal, for the next run.
    """
    checked = _check(cfg)
    with OutputLock(checked.output, log=log):
        run = _Run(cfg, checked, log)
        try:
            run.start()
            run.ingest_videos()
            return run.finish()
        except KeyboardInterrupt:
            raise Interrupted(run.stop()) from None


class _Run:
    """One ingest run's state, so that an interrupt can record what it finished."""

    def __init__(self, cfg: Config, checked: _Checked, log: Callable[[str], None]) -> None:
        self.cfg, self.ingest, self.checked, self.log = cfg, cfg.ingest, checked, log
        self.output = checked.output
        self.t0 = time.monotonic()
        self.summary = IngestSummary(output=self.output, listed=len(checked.listing.entries))
        self.entries: dict[str, dict[str, Any]] = {}
        self.ledger = _Ledger([], {})
        self.classes: tuple[list[str], list[int] | None] = ([], None)
        # Journal records of the videos this run ingests, until each is complete.
        self.records: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.planned: dict[str, dict[str, Any]] = {}  # shard name -> its planned segment
        self.stage = "starting"  # -> "ingesting" once the ledger is read -> "committed"

    # -- before Ray

    def start(self) -> None:
        output, checked = self.output, self.checked
        info = checked.info
        if self.ingest.mode == "replace" and (
            info is not None or storage.is_file(storage.join(output, MANIFEST_FILE))
        ):
            try:
                earlier = f"{sum(row['status'] == 'ok' for row in read_manifest(output))} videos"
            except VidrayError:  # an unreadable manifest is deleted with the rest
                earlier = "its manifest was unreadable"
            remove_dataset(output)
            info = None
            self.log(
                f"ingest: ingest.mode=replace: deleted the dataset in {output} ({earlier}); "
                "starting it afresh"
            )
        storage.makedirs(output)
        shutil.rmtree(scratch_dir(output), ignore_errors=True)  # leftovers of a killed run
        self.classes = _classes(checked.listing, info, self.log)
        index = {name: label for label, name in enumerate(self.classes[0])}
        duplicates = []
        for entry in map(source_entry, checked.listing.entries):
            if entry["label_name"] in index:
                entry["label"] = index[entry["label_name"]]
            if entry["video_id"] in self.entries:  # the listing says why
                duplicates.append(_manifest_row(entry, error=entry["error"]))
            else:
                self.entries[entry["video_id"]] = entry
        self.ledger = _Ledger(read_manifest(output), self.entries)
        for row in duplicates:
            self._settle(row, duplicate=True)
        self.stage = "ingesting"
        self._write_info(self.ledger.rows())  # the output now holds this input's dataset

    # -- the work

    def ingest_videos(self) -> None:
        import ray

        todo = self._settle_known()
        cpus = ray.cluster_resources().get("CPU", 1.0)
        segments: list[dict[str, Any]] = []
        if todo:
            probed = (
                ray.data.from_items(
                    todo, override_num_blocks=_tasks_for(len(todo), _PROBES_PER_TASK, cpus)
                )
                .map(probe_entry)
                .take_all()
            )
            for item in probed:
                if item["error"]:
                    self.records.pop(item["video_id"], None)
                    self._settle(_manifest_row(item, error=item["error"]))
                else:
                    segments.extend(self._plan(item))
            resumed = sum(map(len, self.records.values()))
            self.summary.resumed = resumed
            self.log(
                f"ingest: probed {len(probed)} files -> {len(segments)} segments to ingest"
                + (f" ({resumed} more finished by an interrupted run)" if resumed else "")
            )
        if segments:
            self._run_segments(segments, cpus)

    def _settle_known(self) -> list[dict[str, Any]]:
        """Settle what needs no decoding: listing errors, files done by an earlier run
        (recorded in the manifest, or all their segments in the journal); return the rest."""
        previous = self.ledger.previous
        named = {shard for row in previous.values() for shard in row["shards"]}
        journal: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in read_journal(self.output, known=named):
            journal[record["video_id"]].append(record)
        todo, recovered = [], 0
        for vid, entry in self.entries.items():
            old = previous.get(vid)
            if entry["size"] is None:
                if old is None or old["status"] != "ok":  # else: gone, its row is kept
                    self._settle(_manifest_row(entry, error=entry["error"] or "file not found"))
            elif entry["error"]:
                self._settle(_manifest_row(entry, error=entry["error"]))
            elif old is not None and self._unchanged(old, entry):
                self._settle(old, earlier=True)
            else:
                prefix = _shard_prefix(entry) + "-"
                for record in journal.get(vid, []):
                    if record["shard"].startswith(prefix) and _shard_in_place(self.output, record):
                        self.records[vid][record["shard"]] = record
                if _complete(self.records[vid].values()):
                    row = _video_row(list(self.records.pop(vid).values()), self.ingest)
                    self._settle(row, earlier=True)
                    recovered += 1
                else:
                    todo.append(entry)
        gone = len(self.ledger.gone())
        self.summary.gone = gone
        self.log(
            f"ingest: {len(self.entries)} files, {len(self.classes[0])} classes; "
            f"{self.summary.skipped} already ingested"
            + (f" ({recovered} by an interrupted run)" if recovered else "")
            + f", {len(todo)} to ingest"
            + (f"; {gone} videos of the dataset are no longer in the input" if gone else "")
        )
        return todo

    def _unchanged(self, old: dict[str, Any], entry: dict[str, Any]) -> bool:
        return (
            old["status"] == "ok"
            and (old["size"], old["mtime"]) == (entry["size"], entry["mtime"])
            and old["path"] == entry["path"]
            and old["label_name"] == entry["label_name"]
            and old["split"] == entry["split"]
            and all(
                storage.is_file(storage.join(self.output, WINDOWS_DIR, s)) for s in old["shards"]
            )
        )

    def _plan(self, probed: dict[str, Any]) -> list[dict[str, Any]]:
        """The segments of a video still to ingest: those the journal has no record of."""
        vid = probed["video_id"]
        plan = plan_segments(probed, self.ingest)
        done = self.records.pop(vid, {})
        for segment in plan:
            self.planned[segment["shard"]] = segment
            record = done.get(segment["shard"])
            if record is not None and all(record[k] == segment[k] for k in _SEGMENT_FIELDS):
                self.records[vid][segment["shard"]] = record
        return [s for s in plan if s["shard"] not in self.records[vid]]

    def _run_segments(self, segments: list[dict[str, Any]], cpus: float) -> None:
        import ray

        ingest = self.ingest
        total = sum(s["windows"] for s in segments)
        # Up to segment_windows windows a task, but at least two tasks per CPU.
        tasks = pack_segments(
            segments,
            windows_per_task=min(ingest.segment_windows, max(1, math.ceil(total / (2 * cpus)))),
        )
        progress = ray.remote(num_cpus=0)(IngestProgress).remote(
            Counter(s["video_id"] for s in segments)
        )
        results = ray.data.from_items(
            [{"segments": task} for task in tasks], override_num_blocks=len(tasks)
        ).flat_map(
            ingest_task,
            fn_kwargs={
                "ingest": ingest,
                "flow": self.cfg.flow,
                "output": self.output,
                "progress": progress,
            },
            num_cpus=ingest.cpus_per_task,
            num_gpus=ingest.gpus_per_task,
        )
        started = time.monotonic()
        last = IngestProgress({}).snapshot()

        def line() -> str:
            nonlocal last
            with contextlib.suppress(ray.exceptions.RayError):  # busy: say what it said last
                last = ray.get(progress.snapshot.remote(), timeout=2.0)
            return progress_line(**last, seconds=time.monotonic() - started)

        last_save = time.monotonic()
        rows = iter(results.iter_rows())
        try:
            with Heartbeat(line, self.log, _PROGRESS_EVERY_S):
                for result in rows:
                    self._add(dict(result))
                    if time.monotonic() - last_save >= _MANIFEST_EVERY_S:
                        write_manifest(self.output, self.ledger.rows())
                        last_save = time.monotonic()
        finally:
            # Stops Ray Data's execution and cancels its tasks: after an interrupt none
            # writes while `stop` reads the journal, nor after the lock is released.
            rows.close()
            ray.kill(progress)

    def _add(self, record: dict[str, Any]) -> None:
        """A segment's journal record: the video's manifest row once all are in."""
        vid = record["video_id"]
        self.summary.windows += record["n_windows"]
        self.summary.bytes += record["bytes"]
        self.records[vid][record["shard"]] = record
        if _complete(self.records[vid].values()):
            self._settle(_video_row(list(self.records.pop(vid).values()), self.ingest))

    def _settle(
        self, row: dict[str, Any], *, earlier: bool = False, duplicate: bool = False
    ) -> None:
        """Put a video's row in the manifest; ``earlier``: ingested by an earlier run;
        ``duplicate``: a second file listed with the video's id."""
        if duplicate:
            self.ledger.duplicates.append(row)
        else:
            self.ledger.settled[row["video_id"]] = row
        if row["status"] != "ok" and not duplicate and self.ledger.ok_before(row["video_id"]):
            self.summary.kept_earlier += 1  # its row and windows stay (`_Ledger.rows`)
            self.summary.kept_reasons[row["error"]] += 1
        elif row["status"] != "ok":
            self.summary.quarantined += 1
            self.summary.reasons[row["error"]] += 1
        elif earlier:
            self.summary.skipped += 1
        else:
            self.summary.ingested += 1
            self.summary.small += (
                _small_source_note(row["width"], row["height"], self.ingest) is not None
            )

    # -- the end

    def finish(self) -> IngestSummary:
        prune = self.ingest.mode == "prune"
        rows = self.ledger.rows(prune=prune)
        self.summary.pruned = prune
        write_manifest(self.output, rows)
        self.stage = "committed"
        clear_journal(self.output)  # every record is in the manifest now
        _remove_orphan_shards(self.output, rows)
        shutil.rmtree(scratch_dir(self.output), ignore_errors=True)
        self._write_info(rows)
        self.summary.seconds = time.monotonic() - self.t0
        return self.summary

    def stop(self) -> str:
        """Record what an interrupted run finished; the one line that says so, also when
        recording fails (the journal still holds every finished segment)."""
        try:
            return self._record_stop()
        except Exception as exc:  # a full disk, a lost connection: still the one line
            reason = str(exc).splitlines()[0] if str(exc) else ""
            return (
                f"interrupted; the manifest could not be updated ({type(exc).__name__}: "
                f"{reason}), the finished segments are recorded in "
                f"{storage.join(self.output, JOURNAL_DIR)}; run the same command again to "
                "continue"
            )

    def _record_stop(self) -> str:
        if self.stage == "starting":
            return "interrupted before any video was ingested; run the same command again"
        if self.stage == "ingesting":
            known = {r["shard"] for records in self.records.values() for r in records.values()}
            known |= {shard for row in self.ledger.rows() for shard in row["shards"]}
            # Tasks record segments the driver has not been sent yet.
            for record in read_journal(self.output, known=known):
                planned = self.planned.get(record["shard"])
                if planned and all(record[k] == planned[k] for k in _SEGMENT_FIELDS):
                    self._add(record)
            rows = self.ledger.rows()
            write_manifest(self.output, rows)
            self._write_info(rows)
        unfinished = [records for records in self.records.values() if records]
        kept = (
            f" and {sum(map(len, unfinished))} finished segments of {len(unfinished)} longer videos"
            if unfinished
            else ""
        )
        return (
            f"interrupted: {self.ledger.ok_listed()} of {len(self.entries)} videos ingested and "
            f"recorded in {storage.join(self.output, MANIFEST_FILE)}{kept}; run the same "
            "command again to continue"
        )

    def _write_info(self, rows: list[dict[str, Any]]) -> None:
        classes, class_ids = self.classes
        ok = [row for row in rows if row["status"] == "ok"]
        write_dataset_info(
            self.output,
            {
                "classes": classes,
                **({"class_ids": class_ids} if class_ids is not None else {}),
                "layout": self.ingest.layout,
                "input": self.checked.input,
                "storage": _storage(self.cfg),
                "splits": _splits(self.cfg),
                "videos": len(ok),
                "windows": sum(row["n_windows"] for row in ok),
            },
        )


def _complete(records: Iterable[dict[str, Any]]) -> bool:
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


def _classes(
    listing: SourceListing, info: dict[str, Any] | None, log: Callable[[str], None]
) -> tuple[list[str], list[int] | None]:
    """The dataset's classes: the stored ones first, so the labels of stored windows keep
    their meaning, then classes new in the input. AVA's come from its label map."""
    if info is None or listing.class_ids is not None:
        return listing.classes, listing.class_ids
    earlier = list(info.get("classes") or [])
    added = [name for name in listing.classes if name not in earlier]
    if added and earlier:
        log(
            f"ingest: new classes after the dataset's {len(earlier)}: {', '.join(added)} "
            "(the labels of stored windows keep their meaning)"
        )
    return earlier + added, None


def _remove_orphan_shards(output: str, rows: list[dict[str, Any]]) -> None:
    """Delete the shards no manifest row names: written by a run that crashed before
    recording them, superseded by a changed file's new ones, or pruned."""
    keep = {shard for row in rows for shard in row["shards"]}
    windows = storage.join(output, WINDOWS_DIR)
    for name in storage.list_files(windows):
        if name.endswith(".parquet") and "/" not in name and name not in keep:
            storage.remove(storage.join(windows, name))


def _validate(cfg: Config) -> None:
    ingest = cfg.ingest
    if not ingest.input:
        raise VidrayError("ingest.input is not set: pass --input PATH or ingest.input=PATH")
    if not ingest.output:
        raise VidrayError("ingest.output is not set: pass --output DIR or ingest.output=DIR")
    if ingest.fps <= 0:
        raise VidrayError(f"ingest.fps must be > 0, got {ingest.fps}")
    if ingest.window_frames < 2:
        raise VidrayError(f"ingest.window_frames must be >= 2, got {ingest.window_frames}")
    if ingest.window_stride < 1:
        raise VidrayError(f"ingest.window_stride must be >= 1, got {ingest.window_stride}")
    if ingest.segment_windows < 1:
        raise VidrayError(f"ingest.segment_windows must be >= 1, got {ingest.segment_windows}")
    if ingest.short_side < 0 or ingest.short_side % 2:
        raise VidrayError(f"ingest.short_side must be even and >= 0, got {ingest.short_side}")
    if ingest.max_upscale != 0 and ingest.max_upscale < 1:
        raise VidrayError(
            f"ingest.max_upscale must be 0 (no limit) or >= 1, got {ingest.max_upscale}"
        )
    if not 1 <= ingest.jpeg_quality <= 100:
        raise VidrayError(f"ingest.jpeg_quality must be in 1..100, got {ingest.jpeg_quality}")
    if cfg.flow.bound <= 0:
        raise VidrayError(f"flow.bound must be > 0, got {cfg.flow.bound}")
