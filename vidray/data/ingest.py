"""Ingest: videos -> windows of frames and optical flow in Parquet shards, on Ray Data.

    list sources ─> skip what is done ─> probe (Ray Data, files in batches)
        ─> plan segments ─> pack into tasks ─> decode → flow → encode → shard (Ray Data)
        ─> manifest.parquet + dataset.yaml

A segment is a run of at most ``ingest.segment_windows`` windows of one video,
so a long film is spread over many tasks and no task holds more than one
window of frames at a time; short clips are packed several to a task. Every
segment writes its own shard atomically; the manifest, rewritten as results
arrive, is the commit record. A bad file becomes a manifest row with the
reason, never an exception that stops the job.

The stage functions (`probe_entry`, `ingest_segment`) are plain functions,
testable without Ray; `run_ingest` only wires them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vidray import storage
from vidray.config import Config, FlowConfig, IngestConfig
from vidray.data import decode
from vidray.data.manifest import (
    STORAGE_KEYS,
    TMP_DIR,
    WINDOWS_DIR,
    check_storage_compatible,
    read_manifest,
    write_dataset_info,
    write_manifest,
)
from vidray.data.shards import ShardWriter, encode_images, video_key
from vidray.data.sources import list_sources
from vidray.errors import VideoError, VidrayError

# The driver rewrites the manifest at most this often, so a crash loses little.
_MANIFEST_EVERY_S = 30.0
_PROGRESS_EVERY_S = 5.0
# Probing a file takes a few ms: many per task, or scheduling dominates.
_PROBES_PER_TASK = 32


@dataclass
class IngestSummary:
    output: str
    listed: int = 0
    ingested: int = 0  # ok in this run
    skipped: int = 0  # ok from an earlier run, untouched
    quarantined: int = 0
    windows: int = 0  # written in this run
    bytes: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.ingested + self.skipped

    def report(self) -> str:
        rate = self.windows / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"ingest: {self.ingested} ingested, {self.skipped} already done, "
            f"{self.quarantined} quarantined of {self.listed} files",
            f"ingest: {self.windows} windows, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
            f"({rate:.1f} windows/s) -> {self.output}",
        ]
        for reason, count in self.reasons.most_common(5):
            lines.append(f"ingest: quarantined {count}x: {reason}")
        return "\n".join(lines)


def _stat(path: str) -> tuple[int, float] | None:
    return storage.stat(path)


def scratch_dir(output: str) -> Path:
    """Where a task writes a shard before it is published: inside a local output (the
    rename is then atomic), or in the local temp dir for an object store."""
    if not storage.is_uri(output):
        return Path(output) / TMP_DIR
    digest = hashlib.sha1(output.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"vidray-ingest-{digest}"


def _manifest_row(entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
    stat = _stat(entry["path"])
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
        "size": stat[0] if stat else None,
        "mtime": stat[1] if stat else None,
        "shards": [],
    }
    row.update(fields)
    return row


def probe_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: probe one file. Adds its VideoInfo fields, or ``error`` when unreadable."""
    out = dict(entry, duration=None, fps=None, width=None, height=None, num_frames=None)
    try:
        with storage.local_file(entry["path"]) as local:
            info = decode.probe(local)
    except VideoError as exc:
        out["error"] = str(exc)
        return out
    out.update(
        duration=info.duration,
        fps=info.fps,
        width=info.width,
        height=info.height,
        num_frames=info.num_frames,
    )
    return out


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
    key = video_key(probed["video_id"])
    return [
        dict(
            probed,
            segment=s,
            first_window=s * ingest.segment_windows,
            max_windows=ingest.segment_windows if s < n_segments - 1 else -1,
            windows=min(ingest.segment_windows, n_windows - s * ingest.segment_windows),
            shard=f"{key:016x}-{s:04d}.parquet",
        )
        for s in range(n_segments)
    ]


def _keyframe_segments(probed: dict[str, Any], ingest: IngestConfig) -> list[dict[str, Any]]:
    """Segments of at most ``segment_windows`` keyframes, one window each."""
    keyframes = json.loads(probed["keyframes"])
    per = ingest.segment_windows
    key = video_key(probed["video_id"])
    return [
        dict(
            probed,
            keyframes=json.dumps(keyframes[first : first + per]),
            segment=s,
            first_window=first,
            windows=len(keyframes[first : first + per]),
            shard=f"{key:016x}-{s:04d}.parquet",
        )
        for s, first in enumerate(range(0, len(keyframes), per))
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


def ingest_task(
    task: dict[str, Any], *, ingest: IngestConfig, flow: FlowConfig, output: str
) -> list[dict[str, Any]]:
    """Stage 2 as Ray runs it: the segments of one task, one after the other."""
    return [
        ingest_segment(segment, ingest=ingest, flow=flow, output=output)
        for segment in task["segments"]
    ]


def ingest_segment(
    segment: dict[str, Any], *, ingest: IngestConfig, flow: FlowConfig, output: str
) -> dict[str, Any]:
    """Stage 2: decode one segment's windows, compute flow, encode, write its shard.

    Returns a small result row: windows written, padding, shard size, and any
    decode error (a file that breaks part-way keeps the windows before the break).
    """
    import cv2

    # Ray gives each task `cpus_per_task` cores; OpenCV would otherwise use all of them.
    cv2.setNumThreads(max(1, int(ingest.cpus_per_task)))
    estimator = _flow_estimator(flow)
    shard = storage.join(output, WINDOWS_DIR, segment["shard"])
    writer = ShardWriter(shard, tmp_dir=scratch_dir(output))
    errors: list[str] = []
    padded = 0
    result = {
        "video_id": segment["video_id"],
        "segment": segment["segment"],
        "shard": segment["shard"],
        "n_windows": 0,
        "padded": 0,
        "bytes": 0,
        "error": None,
    }
    try:
        with storage.local_file(segment["path"]) as local:
            windows = _segment_windows(dict(segment, path=str(local)), ingest=ingest, errors=errors)
            for window, extra in windows:
                row = encode_window(segment, window, ingest=ingest, flow=flow, estimator=estimator)
                writer.add({**row, **extra})
                padded = max(padded, window.padded)
    except VideoError as exc:
        errors.append(str(exc))
    except Exception as exc:  # a decoder/codec bug on one file must not stop the job
        errors.append(f"{type(exc).__name__}: {exc}")
    if writer.num_rows:
        result["bytes"] = writer.commit()
    else:
        writer.abort()
        result["shard"] = None
    result.update(n_windows=writer.num_rows, padded=padded, error="; ".join(errors) or None)
    return result


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


def _storage(cfg: Config) -> dict[str, Any]:
    flat = cfg.flat()
    return {key: flat[key] for key in STORAGE_KEYS}


def run_ingest(cfg: Config, *, log: Callable[[str], None] = print) -> IngestSummary:
    """Ingest ``cfg.ingest.input`` into ``cfg.ingest.output``; needs a running Ray."""
    import ray

    ingest, flow = cfg.ingest, cfg.flow
    _validate(cfg)
    output = storage.resolve(ingest.output)
    storage.makedirs(output)
    check_storage_compatible(output, _storage(cfg))
    shutil.rmtree(scratch_dir(output), ignore_errors=True)  # leftovers of a killed run

    t0 = time.monotonic()
    listing = list_sources(
        ingest.input,
        layout=ingest.layout,
        split=ingest.split,
        val_fraction=ingest.val_fraction,
        test_fraction=ingest.test_fraction,
    )
    summary = IngestSummary(output=str(output), listed=len(listing.entries))
    # Keyed by video id, not path: one Kinetics file can hold several trimmed clips.
    previous = {row["video_id"]: row for row in read_manifest(output)}
    rows: dict[str, dict[str, Any]] = {}  # video_id -> manifest row
    todo: list[dict[str, Any]] = []
    for entry in map(asdict, listing.entries):
        vid = entry["video_id"]
        old = previous.get(vid)
        stat = _stat(entry["path"])
        if entry["error"]:
            rows[vid] = _manifest_row(entry, error=entry["error"])
        elif (
            old is not None
            and old["status"] == "ok"
            and stat == (old["size"], old["mtime"])
            and old["path"] == entry["path"]
            and all(storage.is_file(storage.join(output, WINDOWS_DIR, s)) for s in old["shards"])
        ):
            rows[vid] = old
            summary.skipped += 1
        else:
            todo.append(entry)
    log(
        f"ingest: {len(listing.entries)} files, {len(listing.classes)} classes; "
        f"{summary.skipped} already ingested, {len(todo)} to ingest"
    )

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
                rows[item["video_id"]] = _manifest_row(item, error=item["error"])
            else:
                segments.extend(plan_segments(item, ingest))
        log(f"ingest: probed {len(probed)} files -> {len(segments)} segments")

    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    expected = Counter(s["video_id"] for s in segments)
    info = {s["video_id"]: s for s in segments}
    last_save = last_log = time.monotonic()
    if segments:
        total = sum(s["windows"] for s in segments)
        # Up to segment_windows windows a task, but at least two tasks per CPU.
        tasks = pack_segments(
            segments,
            windows_per_task=min(ingest.segment_windows, max(1, math.ceil(total / (2 * cpus)))),
        )
        results = ray.data.from_items(
            [{"segments": task} for task in tasks], override_num_blocks=len(tasks)
        ).flat_map(
            ingest_task,
            fn_kwargs={"ingest": ingest, "flow": flow, "output": output},
            num_cpus=ingest.cpus_per_task,
            num_gpus=ingest.gpus_per_task,
        )
        for result in results.iter_rows():
            vid = result["video_id"]
            by_video[vid].append(result)
            summary.windows += result["n_windows"]
            summary.bytes += result["bytes"]
            if len(by_video[vid]) == expected[vid]:
                rows[vid] = _video_row(info[vid], by_video.pop(vid))
            now = time.monotonic()
            if now - last_log >= _PROGRESS_EVERY_S:
                done = sum(1 for v in expected if v in rows)
                log(
                    f"ingest: {done}/{len(expected)} videos, {summary.windows} windows, "
                    f"{summary.windows / (now - t0):.1f} windows/s"
                )
                last_log = now
            if now - last_save >= _MANIFEST_EVERY_S:
                write_manifest(output, [*rows.values()])
                last_save = now

    for row in rows.values():
        if row["status"] == "quarantined":
            summary.quarantined += 1
            summary.reasons[_reason(row["error"])] += 1
        elif row["video_id"] in expected:
            summary.ingested += 1
    write_manifest(output, list(rows.values()))
    _remove_orphan_shards(output, rows.values())
    shutil.rmtree(scratch_dir(output), ignore_errors=True)
    write_dataset_info(
        output,
        {
            "classes": listing.classes,
            **({"class_ids": listing.class_ids} if listing.class_ids is not None else {}),
            "layout": ingest.layout,
            "input": str(ingest.input),
            "storage": _storage(cfg),
            "videos": summary.ok,
            "windows": sum(r["n_windows"] for r in rows.values() if r["status"] == "ok"),
        },
    )
    summary.seconds = time.monotonic() - t0
    return summary


def _video_row(probed: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold a video's segment results into its manifest row."""
    results.sort(key=lambda r: r["segment"])
    n_windows = sum(r["n_windows"] for r in results)
    errors = [r["error"] for r in results if r["error"]]
    if probed.get("problems"):  # annotation rows left out (layout ava)
        errors.append(probed["problems"])
    error = "; ".join(dict.fromkeys(errors)) or None
    fields = dict(
        duration=probed["duration"],
        fps=probed["fps"],
        width=probed["width"],
        height=probed["height"],
        n_windows=n_windows,
        padded=max(r["padded"] for r in results),
        shards=[r["shard"] for r in results if r["shard"]],
        error=error,
    )
    if n_windows == 0:
        return _manifest_row(probed, **dict(fields, error=error or "no windows decoded"))
    return _manifest_row(probed, status="ok", **fields)


def _reason(error: str | None) -> str:
    """The kind of failure, without the file name, for the summary's top reasons."""
    text = error or "unknown"
    return text.split(": ", 1)[-1] if ": " in text else text


def _remove_orphan_shards(output: str, rows: Any) -> None:
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
    if not 1 <= ingest.jpeg_quality <= 100:
        raise VidrayError(f"ingest.jpeg_quality must be in 1..100, got {ingest.jpeg_quality}")
    if cfg.flow.bound <= 0:
        raise VidrayError(f"flow.bound must be > 0, got {cfg.flow.bound}")
