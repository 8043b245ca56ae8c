"""A segment's shard rows: its windows decoded, their optical flow computed, both encoded.

One row per window (the data contract in DESIGN.md): on the regular grid of
``ingest.window_stride``, or (layout ava) one centred on each keyframe with the
keyframe's boxes. `vidray.data.segments.ingest_task` writes them to the task's shard.
Overlapping windows share frames: each frame is encoded, and each frame pair's
flow computed, once per segment (`WindowCoder`).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

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
    coder = WindowCoder(ingest=ingest, flow=flow, estimator=flow_estimator(flow))
    for window, extra in _segment_windows(segment, ingest=ingest, errors=errors):
        yield {**coder.row(segment, window), **extra}


@functools.lru_cache(maxsize=2)
def flow_estimator(flow: FlowConfig) -> Callable | None:
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


class WindowCoder:
    """Turns a segment's windows, in order, into shard rows, each frame and pair once.

    Windows overlap when ``ingest.window_stride < ingest.window_frames`` (and AVA's
    keyframe windows when keyframes are close): the encoded frames and the encoded
    flow fields of the overlap are kept, keyed by grid index (`decode.Window.frame_indices`),
    and only the new ones are computed. A row is byte for byte the row of a fresh
    coder, because JPEG encoding, quantisation and a CPU estimator's flow of a pair
    (`vidray.data.flow.OpenCVFlow` builds a fresh OpenCV object per pair) depend on
    that frame or pair alone; an estimator whose pairs are not independent
    (``per_pair`` false: RAFT's batches) gets each window whole, as before. What
    windows before the current one hold is dropped.
    """

    def __init__(
        self, *, ingest: IngestConfig, flow: FlowConfig, estimator: Callable | None
    ) -> None:
        self.ingest = ingest
        self.flow = flow
        self.estimator = estimator
        self.frames: dict[int, bytes] = {}  # grid index -> encoded frame
        self.fields: dict[tuple[int, int], bytes] = {}  # grid index pair -> encoded flow

    def row(self, segment: dict[str, Any], window: decode.Window) -> dict[str, Any]:
        """One shard row (the data contract): the window's frames, its flow, where it sits."""
        first = min(window.frame_indices)
        self.frames = {i: e for i, e in self.frames.items() if i >= first}
        self.fields = {p: e for p, e in self.fields.items() if p[0] >= first}
        frames = window.frames
        return {
            **video_fields(segment),
            "window_idx": window.index,
            "start_sec": window.start_sec,
            "fps": self.ingest.fps,
            "height": frames.shape[1],
            "width": frames.shape[2],
            "padded": window.padded,
            "frames_codec": self.ingest.frames_codec,
            "frames": self._frames(window),
            "flow_codec": self.flow.codec if self.estimator is not None else None,
            "flow": self._flow(window) if self.estimator is not None else None,
            "flow_bound": self.flow.bound,
        }

    def _frames(self, window: decode.Window) -> list[bytes]:
        new = {i: at for at, i in enumerate(window.frame_indices) if i not in self.frames}
        encoded = encode_images(
            window.frames[list(new.values())],
            codec=self.ingest.frames_codec,
            quality=self.ingest.jpeg_quality,
        )
        self.frames.update(zip(new, encoded, strict=True))
        return [self.frames[i] for i in window.frame_indices]

    def _flow(self, window: decode.Window) -> list[bytes]:
        pairs = list(itertools.pairwise(window.frame_indices))
        # An estimator that does not say its pairs are independent gets whole windows.
        if not getattr(self.estimator, "per_pair", False):
            return self._encode_flow(self.estimator(window.frames))
        for run in _new_runs(pairs, known=self.fields):
            # A run of consecutive new pairs is one estimator call on its frames.
            fields = self.estimator(window.frames[run.start : run.stop + 1])
            encoded = self._encode_flow(fields)
            self.fields.update(zip(pairs[run.start : run.stop], encoded, strict=True))
        return [self.fields[p] for p in pairs]

    def _encode_flow(self, fields: np.ndarray) -> list[bytes]:
        from vidray.data.flow import quantize_flow

        return encode_images(
            quantize_flow(fields, self.flow.bound),
            codec=self.flow.codec,
            quality=self.ingest.jpeg_quality,
        )


def video_fields(segment: dict[str, Any]) -> dict[str, Any]:
    """The columns every row of a segment shares: which video, its label and split."""
    return {
        "video_id": segment["video_id"],
        "video_key": video_key(segment["video_id"]),
        "label": segment["label"],
        "label_name": segment["label_name"],
        "split": segment["split"],
    }


def _new_runs(pairs: list[tuple[int, int]], *, known: Iterable[tuple[int, int]]) -> list[range]:
    """Runs of consecutive positions in ``pairs`` whose pair is neither ``known`` nor
    earlier in ``pairs`` (a padded window repeats its last pair)."""
    runs: list[range] = []
    seen = set(known)
    for at, pair in enumerate(pairs):
        if pair in seen:
            continue
        seen.add(pair)
        if runs and runs[-1].stop == at:
            runs[-1] = range(runs[-1].start, at + 1)
        else:
            runs.append(range(at, at + 1))
    return runs


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
