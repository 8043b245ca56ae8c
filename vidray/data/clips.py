"""Training clips derived from stored windows at read time.

A window holds W frames at the base fps (and W-1 flow fields). A clip takes
T of them at temporal stride s, at a random offset in training and centred in
evaluation, crops them to ``clip.crop`` (random / centre), optionally flips
them (which negates the flow's x component) and, for flow-reading models,
stacks L consecutive flow fields centred on the clip. Changing T, s, crop or
L changes only this derivation, never the shards.

Multi-view testing (evaluation only) takes N clips per window, evenly spaced
over its valid offsets, times M crops (1: centre; 3: both ends and the centre
of the long side), so one window row gives N*M clips, temporal view major.

Only the frames (and flow fields) a clip uses are decoded, and everything
stays uint8: conversion to float and normalisation happen on the training
device (`vidray.train.inputs`). `vidray.data.reading` reads shards through a sampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vidray.config import ClipConfig
from vidray.data.shards import Entry, StoredEntries, cut_region, decode_crops, decode_images
from vidray.errors import VidrayError

# Columns a clip needs; flow is read only for flow-reading models.
_BASE_COLUMNS = ["video_key", "label", "height", "width", "frames_codec", "frames"]
_FLOW_COLUMNS = ["flow_codec", "flow"]
SPATIAL_VIEWS = (1, 3)


def check_views(temporal_views: int, spatial_views: int) -> None:
    """One-line errors for view counts multi-view testing does not define."""
    if temporal_views < 1:
        raise VidrayError(f"eval.temporal_views={temporal_views}: needs at least 1 clip per window")
    if spatial_views not in SPATIAL_VIEWS:
        raise VidrayError(
            f"eval.spatial_views={spatial_views}: must be 1 (centre crop) or 3 "
            "(both ends and the centre of the long side)"
        )


def temporal_offsets(n: int, span: int, views: int) -> list[int]:
    """First frames of ``views`` clips of ``span`` frames in an ``n``-frame window.

    One view is centred; more are evenly spaced from the first valid offset to
    the last, so together they cover the whole window.
    """
    last = n - span
    if views == 1:
        return [last // 2]
    return [round(i * last / (views - 1)) for i in range(views)]


def spatial_offsets(height: int, width: int, crop: int, views: int) -> list[tuple[int, int]]:
    """(top, left) of ``views`` square crops: the centre, or 3 along the long side."""
    top, left = (height - crop) // 2, (width - crop) // 2
    if views == 1:
        return [(top, left)]
    if width >= height:
        return [(top, 0), (top, left), (top, width - crop)]
    return [(0, left), (top, left), (height - crop, left)]


@dataclass(frozen=True)
class ClipSampler:
    """Derives clips from a batch of window rows (a pyarrow Table).

    Stateless apart from its parameters, so Ray Data can ship it to workers;
    ``train=True`` draws offsets, crops and flips from the generator it is given
    (`EpochReader` seeds one per shard and epoch), else from fresh entropy. In evaluation,
    ``temporal_views`` x ``spatial_views`` deterministic clips come from each
    window (see `temporal_offsets`, `spatial_offsets`); ``video_ids=True`` adds
    the string ``video_id`` of every clip (for reports; training leaves it out).
    """

    clip: ClipConfig
    flow_L: int
    train: bool
    temporal_views: int = 1
    spatial_views: int = 1
    video_ids: bool = False

    def __post_init__(self) -> None:
        check_views(self.temporal_views, self.spatial_views)
        if self.train and self.temporal_views * self.spatial_views != 1:
            raise VidrayError("multi-view clips are for evaluation only (train=False)")

    @property
    def columns(self) -> list[str]:
        """The shard columns this sampler reads."""
        return (
            _BASE_COLUMNS
            + (_FLOW_COLUMNS if self.flow_L else [])
            + (["video_id"] if self.video_ids else [])
        )

    def __call__(
        self, table: pa.Table, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        rng = (rng or np.random.default_rng()) if self.train else None
        rows = _window_rows(table)
        per_row = 1 if self.train else self.temporal_views * self.spatial_views
        # Every clip is cut straight into the batch: no per-clip arrays to stack.
        frames, flow = self._empty(len(rows) * per_row)
        for i, row in enumerate(rows):
            clips = slice(i * per_row, (i + 1) * per_row)
            out = frames[clips], None if flow is None else flow[clips]
            if self.train:
                self.sample(row, rng, out=out)
            else:
                self.views(row, out=out)
        owners = np.repeat(np.arange(len(rows)), per_row)
        batch = {
            "frames": frames if rows else np.zeros((0,), np.uint8),
            "label": np.array([row["label"] for row in rows], np.int64)[owners],
            "video_key": np.array([row["video_key"] for row in rows], np.int64)[owners],
        }
        if flow is not None:
            batch["flow"] = flow
        if self.video_ids:
            batch["video_id"] = np.array([rows[i]["video_id"] for i in owners], dtype=object)
        return batch

    def _empty(self, clips: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Uninitialised uint8 frames (clips, T, c, c, 3) and flow (clips, L, c, c, 2) or None."""
        T, crop, L = self.clip.T, self.clip.crop, self.flow_L
        frames = np.empty((clips, T, crop, crop, 3), np.uint8)
        return frames, np.empty((clips, L, crop, crop, 2), np.uint8) if L else None

    def sample(
        self,
        row: dict[str, Any],
        rng: np.random.Generator | None,
        out: tuple[np.ndarray, np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One clip from one window row: uint8 (T, c, c, 3) and (L, c, c, 2) or None
        (written into ``out``, one clip's (1, ...) arrays, when given)."""
        n, span, height, width = self._check(row)
        crop = self.clip.crop
        start = int(rng.integers(0, n - span + 1)) if rng is not None else (n - span) // 2
        top = int(rng.integers(0, height - crop + 1)) if rng is not None else (height - crop) // 2
        left = int(rng.integers(0, width - crop + 1)) if rng is not None else (width - crop) // 2
        flip = self.clip.hflip and rng is not None and bool(rng.integers(0, 2))
        frames, flow = out or self._empty(1)
        self._cut(row, start, [(top, left)], flip, frames, flow)
        return frames[0], None if flow is None else flow[0]

    def views(
        self, row: dict[str, Any], out: tuple[np.ndarray, np.ndarray | None] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The evaluation clips of one window row, temporal view major, never flipped
        (written into ``out``, (N*M, ...) arrays, when given)."""
        n, span, height, width = self._check(row)
        crops = spatial_offsets(height, width, self.clip.crop, self.spatial_views)
        starts = temporal_offsets(n, span, self.temporal_views)
        frames, flow = out or self._empty(len(starts) * len(crops))
        for v, start in enumerate(starts):
            cuts = slice(v * len(crops), (v + 1) * len(crops))
            self._cut(row, start, crops, False, frames[cuts], None if flow is None else flow[cuts])
        return [(clip, None if flow is None else flow[j]) for j, clip in enumerate(frames)]

    def _check(self, row: dict[str, Any]) -> tuple[int, int, int, int]:
        """(window frames, clip span, height, width), or a one-line error if the clip won't fit."""
        T, stride, crop = self.clip.T, self.clip.stride, self.clip.crop
        n = len(row["frames"])
        span = (T - 1) * stride + 1
        if span > n:
            raise VidrayError(
                f"clip.T={T} at clip.stride={stride} spans {span} frames, "
                f"but windows hold {n}: lower clip.T or clip.stride"
            )
        height, width = enlarged_size(row["height"], row["width"], crop)
        return n, span, height, width

    def _flow_entries(self, row: dict[str, Any], start: int) -> Sequence[Entry]:
        """The L consecutive flow fields centred on the clip's middle frame, kept inside
        the window: only these are decoded (or, raw, copied)."""
        L = self.flow_L
        if row["flow"] is None:
            raise VidrayError(
                f"flow.L={L} needs optical flow, but the data was ingested with "
                "flow.backend=none: re-ingest with a flow backend or set flow.L=0"
            )
        fields = len(row["flow"])
        if L > fields:
            raise VidrayError(f"flow.L={L} is more than the {fields} flow fields per window")
        span = (self.clip.T - 1) * self.clip.stride + 1
        first = min(max(start + span // 2 - L // 2, 0), fields - L)
        return row["flow"][first : first + L]

    def _cut(
        self,
        row: dict[str, Any],
        start: int,
        crops: list[tuple[int, int]],
        flip: bool,
        frames: np.ndarray,
        flow: np.ndarray | None,
    ) -> None:
        """The clips starting at frame ``start``, one per (top, left) crop, into ``frames``
        (M, T, c, c, 3) and ``flow`` (M, L, c, c, 2): each picked entry decoded once."""
        T, stride, crop = self.clip.T, self.clip.stride, self.clip.crop
        picked = [row["frames"][start + i * stride] for i in range(T)]
        fields = self._flow_entries(row, start) if flow is not None else []
        stored = {"height": row["height"], "width": row["width"]}
        if min(row["height"], row["width"]) >= crop:
            decode_crops(
                picked, codec=row["frames_codec"], **stored, corners=crops, out=frames, mirror=flip
            )
            if flow is not None:
                decode_crops(
                    fields, codec=row["flow_codec"], **stored, corners=crops, out=flow, mirror=flip
                )
        else:
            self._cut_enlarged(row, picked, fields, crops, flip, frames, flow)
        if flip and flow is not None:
            negate_flow_x(flow)

    def _cut_enlarged(
        self,
        row: dict[str, Any],
        picked: list[Entry],
        fields: Sequence[Entry],
        crops: list[tuple[int, int]],
        flip: bool,
        frames: np.ndarray,
        flow: np.ndarray | None,
    ) -> None:
        """`_cut` of a window stored smaller than the crop: decoded whole, enlarged, cut."""
        stored = {"height": row["height"], "width": row["width"]}
        full = decode_images(picked, codec=row["frames_codec"], **stored, channels=3)
        full_flow = None
        if flow is not None:
            full_flow = decode_images(fields, codec=row["flow_codec"], **stored, channels=2)
        full, full_flow = enlarge(full, full_flow, enlarged_size(**stored, crop=self.clip.crop))
        for m, (top, left) in enumerate(crops):
            for t, image in enumerate(full):
                cut_region(image, top, left, flip, frames[m, t])
            for t, image in enumerate([] if full_flow is None else full_flow):
                cut_region(image, top, left, flip, flow[m, t])


def _window_rows(table: pa.Table) -> list[dict[str, Any]]:
    """A batch's window rows as dicts; ``frames`` and ``flow`` are `StoredEntries` rows
    (views of Arrow's buffers), so only the entries a clip picks are ever copied."""
    stored = {
        name: StoredEntries(table.column(name))
        for name in ("frames", "flow")
        if name in table.column_names
    }
    plain = {
        name: table.column(name).to_pylist() for name in table.column_names if name not in stored
    }
    return [
        {
            **{name: values[i] for name, values in plain.items()},
            **{name: entries[i] for name, entries in stored.items()},
        }
        for i in range(table.num_rows)
    ]


def hflip(frames: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A keyframe clip mirrored left to right: frames (T, H, W, C) along W and normalised
    (x1, y1, x2, y2) boxes with them (detection training's flip). `ClipSampler` mirrors
    its clips as it cuts them (`decode_crops`) and negates flow x with `negate_flow_x`."""
    boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
    return frames[:, :, ::-1], boxes


def negate_flow_x(flow: np.ndarray) -> None:
    """Negate the x component of quantized flow (..., 2) in place: quantization is
    symmetric about 127.5, so that is 255 - q exactly."""
    np.subtract(255, flow[..., 0], out=flow[..., 0])


def enlarged_size(height: int, width: int, crop: int) -> tuple[int, int]:
    """The size a window is read at: as stored, or enlarged (aspect kept) until its short
    side takes ``clip.crop``. Ingest enlarges a small source only ``ingest.max_upscale``
    times, so a tiny video in a large dataset can be stored smaller than the crop."""
    short = min(height, width)
    if short >= crop:
        return height, width
    return max(crop, math.ceil(height * crop / short)), max(crop, math.ceil(width * crop / short))


def enlarge(
    frames: np.ndarray, flow: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames (N, h, w, 3) and quantized flow (L, h, w, 2) resized to ``size`` (H, W).

    Flow is a displacement in pixels, so it grows with the frame: its quantized
    values are scaled about the zero level 127.5 (and clipped to the stored bound).
    """
    import cv2

    # A read task has one CPU: OpenCV's pool would only add threads that outlive the
    # task in the Ray worker (the reader starts none; see `shard_batches`).
    cv2.setNumThreads(1)
    height, width = size
    scale_y, scale_x = height / frames.shape[1], width / frames.shape[2]

    def resized(images: np.ndarray) -> np.ndarray:
        return np.stack(
            [cv2.resize(i, (width, height), interpolation=cv2.INTER_LINEAR) for i in images]
        )

    frames = resized(frames)
    if flow is None:
        return frames, None
    moved = resized(flow).astype(np.float32) - 127.5
    moved *= np.array([scale_x, scale_y], np.float32)
    return frames, np.clip(np.rint(moved + 127.5), 0, 255).astype(np.uint8)
