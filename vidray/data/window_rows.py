"""A segment's shard rows: its windows decoded, their optical flow computed, both encoded.

One row per window (the data contract in DESIGN.md): on the regular grid of
``ingest.window_stride``, or (layout ava) one centred on each keyframe with the
keyframe's boxes. `vidray.data.segments.ingest_segment` writes them to the shard.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from vidray.config import FlowConfig, IngestConfig
from vidray.data import decode
from vidray.data.shards import encode_images
from vidray.data.sources import video_key


def segment_rows(
    segment: dict[str, Any], *, ingest: IngestConfig, flow: FlowConfig, errors: list[str]
) -> Iterator[dict[str, Any]]:
    """The shard rows of a segment whose ``path`` is a local file, window by window; a
    media error raises after the rows before it, and notes go to ``errors``."""
    import cv2

    # Ray gives each task `cpus_per_task` cores; OpenCV would otherwise use all of them.
    cv2.setNumThreads(max(1, int(ingest.cpus_per_task)))
    estimator = _flow_estimator(flow)
    for window, extra in _segment_windows(segment, ingest=ingest, errors=errors):
        row = encode_window(segment, window, ingest=ingest, flow=flow, estimator=estimator)
        yield {**row, **extra}


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


def _segment_windows(
    segment: dict[str, Any], *, ingest: IngestConfig, errors: list[str]
) -> Iterator[tuple[decode.Window, dict[str, Any]]]:
    """A segment's windows and each one's extra columns: windows on the regular grid,
    or (layout ava) one centred on each keyframe, with the keyframe's boxes."""
    if segment.get("keyframes"):
        yield from _keyframe_windows(segment, ingest=ingest, errors=errors)
    else:
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


def _keyframe_windows(
    segment: dict[str, Any], *, ingest: IngestConfig, errors: list[str]
) -> Iterator[tuple[decode.Window, dict[str, Any]]]:
    """One window centred on each of the segment's AVA keyframes, with its boxes."""
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
