"""Training clips derived from stored windows at read time.

A window holds W frames at the base fps (and W-1 flow fields). A clip takes
T of them at temporal stride s, at a random offset in training and centred in
evaluation, crops them to ``clip.crop`` (random / centre), optionally flips
them (which negates the flow's x component) and, for flow-reading models,
stacks L consecutive flow fields centred on the clip. Changing T, s, crop or
L changes only this derivation, never the shards.

Only the frames (and flow fields) a clip uses are decoded, and everything
stays uint8: conversion to float and normalisation happen on the training
device (`vidray.train.inputs`).

    ds = read_clips(data_dir, split="train", clip=cfg.clip, flow_L=cfg.flow.L, train=True)
    for batch in ds.iter_torch_batches(batch_size=16): ...   # Ray Data
    for batch in iter_clip_batches(data_dir, split="val", ...): ...  # in-process, no Ray
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidray.config import ClipConfig
from vidray.data.manifest import WINDOWS_DIR, read_dataset_info, read_manifest
from vidray.data.shards import decode_images
from vidray.errors import VidrayError

# Columns a clip needs; flow is read only for flow-reading models.
_BASE_COLUMNS = ["video_key", "label", "height", "width", "frames_codec", "frames"]
_FLOW_COLUMNS = ["flow_codec", "flow"]


@dataclass(frozen=True)
class ClipSampler:
    """Derives clips from a batch of window rows (a pyarrow Table).

    Stateless apart from its parameters, so Ray Data can ship it to workers;
    ``train=True`` draws offsets, crops and flips from fresh entropy on every
    call, so each epoch sees new clips of the same windows.
    """

    clip: ClipConfig
    flow_L: int
    train: bool

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        rng = np.random.default_rng() if self.train else None
        rows = table.to_pylist()
        frames, flows = [], []
        for row in rows:
            clip_frames, clip_flow = self.sample(row, rng)
            frames.append(clip_frames)
            flows.append(clip_flow)
        batch = {
            "frames": np.stack(frames) if rows else np.zeros((0,), np.uint8),
            "label": np.array([r["label"] for r in rows], np.int64),
            "video_key": np.array([r["video_key"] for r in rows], np.int64),
        }
        if self.flow_L:
            batch["flow"] = np.stack(flows)
        return batch

    def sample(
        self, row: dict[str, Any], rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One clip from one window row: uint8 (T, c, c, 3) and (L, c, c, 2) or None."""
        T, stride, crop, L = self.clip.T, self.clip.stride, self.clip.crop, self.flow_L
        n = len(row["frames"])
        span = (T - 1) * stride + 1
        if span > n:
            raise VidrayError(
                f"clip.T={T} at clip.stride={stride} spans {span} frames, "
                f"but windows hold {n}: lower clip.T or clip.stride"
            )
        height, width = row["height"], row["width"]
        if crop > min(height, width):
            raise VidrayError(
                f"clip.crop={crop} is larger than the stored frames ({width}x{height}): "
                "lower clip.crop or re-ingest with a larger ingest.short_side"
            )
        start = int(rng.integers(0, n - span + 1)) if rng is not None else (n - span) // 2
        top = int(rng.integers(0, height - crop + 1)) if rng is not None else (height - crop) // 2
        left = int(rng.integers(0, width - crop + 1)) if rng is not None else (width - crop) // 2
        flip = self.clip.hflip and rng is not None and bool(rng.integers(0, 2))

        picked = [row["frames"][start + i * stride] for i in range(T)]
        frames = decode_images(
            picked, codec=row["frames_codec"], height=height, width=width, channels=3
        )[:, top : top + crop, left : left + crop]
        flow = None
        if L:
            if row["flow"] is None:
                raise VidrayError(
                    f"flow.L={L} needs optical flow, but the data was ingested with "
                    "flow.backend=none: re-ingest with a flow backend or set flow.L=0"
                )
            fields = len(row["flow"])
            if L > fields:
                raise VidrayError(f"flow.L={L} is more than the {fields} flow fields per window")
            # L consecutive fields centred on the clip's middle frame, kept inside the window.
            first = min(max(start + span // 2 - L // 2, 0), fields - L)
            flow = decode_images(
                row["flow"][first : first + L],
                codec=row["flow_codec"],
                height=height,
                width=width,
                channels=2,
            )[:, top : top + crop, left : left + crop]
        if flip:
            frames = frames[:, :, ::-1]
            if flow is not None:
                # Quantization is symmetric about 127.5, so negating x is 255 - q exactly.
                flow = flow[:, :, ::-1].copy()
                flow[..., 0] = 255 - flow[..., 0]
        return np.ascontiguousarray(frames), None if flow is None else np.ascontiguousarray(flow)


def _columns(flow_L: int) -> list[str]:
    return _BASE_COLUMNS + (_FLOW_COLUMNS if flow_L else [])


def window_files(data_dir: str | Path, *, split: str | None = None) -> list[str]:
    """The shard files of an ingest output, or only those of one split.

    A shard holds windows of one video, and a video is in one split, so the
    manifest tells which files to read: training never opens the val shards.
    """
    data_dir = Path(data_dir)
    rows = [r for r in read_manifest(data_dir) if r["status"] == "ok"]
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    files = sorted(str(data_dir / WINDOWS_DIR / shard) for r in rows for shard in r["shards"])
    if not files:
        where = f" in split {split!r}" if split is not None else ""
        raise VidrayError(f"{data_dir} has no window shards{where}: run `vidray ingest` first")
    return files


def _clips_from_shards(
    paths: Iterable[str], sampler: ClipSampler, *, batch_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    """Read shards (only the columns the clip needs) and derive their clips, batch by batch."""
    columns = _columns(sampler.flow_L)
    for path in paths:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield sampler(pa.Table.from_batches([batch]))


@dataclass(frozen=True)
class ShardReader:
    """Ray Data stage: a batch of shard paths -> batches of clips.

    One task reads a group of shards with pyarrow. Ray's own `read_parquet`
    starts a read task per file, which costs ~60 ms each: at one shard per
    video segment that overhead, paid every epoch, exceeded the reading itself.
    """

    sampler: ClipSampler
    batch_rows: int = 32

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        yield from _clips_from_shards(batch["path"], self.sampler, batch_rows=self.batch_rows)


def read_clips(
    data_dir: str | Path,
    *,
    split: str,
    clip: ClipConfig,
    flow_L: int,
    train: bool,
    shards_per_task: int = 16,
) -> Any:
    """A Ray Dataset of clip batches for one split (needs a running Ray).

    Each execution (each epoch) re-derives the clips, so training sees new
    offsets, crops and flips every epoch; in training the shard groups also
    come in a new order.
    """
    import ray

    read_dataset_info(data_dir)  # a clear error for a directory that is not an ingest output
    files = window_files(data_dir, split=split)
    ds = ray.data.from_items(
        [{"path": f} for f in files], override_num_blocks=math.ceil(len(files) / shards_per_task)
    )
    if train:
        ds = ds.randomize_block_order()
    return ds.map_batches(ShardReader(ClipSampler(clip, flow_L, train)), batch_size=shards_per_task)


def iter_clip_batches(
    data_dir: str | Path,
    *,
    split: str,
    clip: ClipConfig,
    flow_L: int,
    train: bool = False,
    batch_rows: int = 32,
) -> Iterator[dict[str, np.ndarray]]:
    """The same clips in-process, without Ray: for evaluation and tests."""
    yield from _clips_from_shards(
        window_files(data_dir, split=split),
        ClipSampler(clip, flow_L, train),
        batch_rows=batch_rows,
    )
