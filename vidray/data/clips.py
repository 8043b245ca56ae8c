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
device (`vidray.train.inputs`).

    ds = read_clips(data_dir, split="train", clip=cfg.clip, flow_L=cfg.flow.L, train=True)
    for batch in ds.iter_torch_batches(batch_size=16): ...   # Ray Data
    for batch in iter_clip_batches(data_dir, split="val", ...): ...  # in-process, no Ray
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidray import storage
from vidray.config import ClipConfig
from vidray.data.manifest import WINDOWS_DIR, read_dataset_info, read_manifest
from vidray.data.shards import decode_images
from vidray.errors import VidrayError

# Columns a clip needs; flow is read only for flow-reading models.
_BASE_COLUMNS = ["video_key", "label", "height", "width", "frames_codec", "frames"]
_FLOW_COLUMNS = ["flow_codec", "flow"]
SPATIAL_VIEWS = (1, 3)
# What a draw from (train.seed, epoch) is for: numpy spawn keys, so these streams share
# no seed with each other nor with the loop's local shuffle ([seed, epoch, rank]).
SHARD_ORDER, SHARD_CLIPS = 0, 1


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
        rows = table.to_pylist()
        frames, flows, owners = [], [], []
        for i, row in enumerate(rows):
            clips = [self.sample(row, rng)] if self.train else self.views(row)
            for clip_frames, clip_flow in clips:
                frames.append(clip_frames)
                flows.append(clip_flow)
                owners.append(i)
        batch = {
            "frames": np.stack(frames) if rows else np.zeros((0,), np.uint8),
            "label": np.array([rows[i]["label"] for i in owners], np.int64),
            "video_key": np.array([rows[i]["video_key"] for i in owners], np.int64),
        }
        if self.flow_L:
            batch["flow"] = np.stack(flows)
        if self.video_ids:
            batch["video_id"] = np.array([rows[i]["video_id"] for i in owners], dtype=object)
        return batch

    def sample(
        self, row: dict[str, Any], rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One clip from one window row: uint8 (T, c, c, 3) and (L, c, c, 2) or None."""
        n, span, height, width = self._check(row)
        crop = self.clip.crop
        start = int(rng.integers(0, n - span + 1)) if rng is not None else (n - span) // 2
        top = int(rng.integers(0, height - crop + 1)) if rng is not None else (height - crop) // 2
        left = int(rng.integers(0, width - crop + 1)) if rng is not None else (width - crop) // 2
        flip = self.clip.hflip and rng is not None and bool(rng.integers(0, 2))
        return self._cut(row, start, [(top, left)], flip)[0]

    def views(self, row: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The evaluation clips of one window row, temporal view major, never flipped."""
        n, span, height, width = self._check(row)
        crops = spatial_offsets(height, width, self.clip.crop, self.spatial_views)
        return [
            clip
            for start in temporal_offsets(n, span, self.temporal_views)
            for clip in self._cut(row, start, crops, False)
        ]

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

    def _cut(
        self, row: dict[str, Any], start: int, crops: list[tuple[int, int]], flip: bool
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The clips starting at frame ``start``, one per (top, left) crop; decoded once."""
        T, stride, crop, L = self.clip.T, self.clip.stride, self.clip.crop, self.flow_L
        span = (T - 1) * stride + 1
        height, width = row["height"], row["width"]
        picked = [row["frames"][start + i * stride] for i in range(T)]
        full = decode_images(
            picked, codec=row["frames_codec"], height=height, width=width, channels=3
        )
        full_flow = None
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
            full_flow = decode_images(
                row["flow"][first : first + L],
                codec=row["flow_codec"],
                height=height,
                width=width,
                channels=2,
            )
        if min(height, width) < crop:
            full, full_flow = enlarge(full, full_flow, enlarged_size(height, width, crop))
        clips = []
        for top, left in crops:
            frames = full[:, top : top + crop, left : left + crop]
            flow = None if full_flow is None else full_flow[:, top : top + crop, left : left + crop]
            if flip:
                frames, flow, _ = hflip(frames, flow)
            clips.append(
                (
                    np.ascontiguousarray(frames),
                    None if flow is None else np.ascontiguousarray(flow),
                )
            )
        return clips


def window_files(data_dir: str | Path, *, split: str | None = None) -> list[str]:
    """The shard files of an ingest output, or only those of one split.

    A shard holds windows of one video, and a video is in one split, so the
    manifest tells which files to read: training never opens the val shards.
    """
    ingested = [r for r in read_manifest(data_dir) if r["status"] == "ok"]
    rows = [r for r in ingested if split is None or r["split"] == split]
    files = sorted(storage.join(data_dir, WINDOWS_DIR, s) for r in rows for s in r["shards"])
    if files:
        return files
    if not ingested:
        raise VidrayError(f"{data_dir} has no ingested videos: run `vidray ingest` first")
    videos = Counter(r["split"] for r in ingested)
    splits = ", ".join(f"{name} ({n} videos)" for name, n in sorted(videos.items()))
    raise VidrayError(f"{data_dir} has no split {split!r}; its splits: {splits}")


def clips_from_shards(
    paths: Iterable[str],
    sampler: Any,
    *,
    batch_rows: int,
    seeds: Iterable[int | None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Read shards (only the columns the clip needs) and derive their clips, batch by
    batch; a training sampler draws from a generator seeded by the shard's seed."""
    paths = list(paths)
    seeds = [None] * len(paths) if seeds is None else seeds
    for path, seed in zip(paths, seeds, strict=True):
        rng = np.random.default_rng(seed)
        for batch in shard_batches(path, columns=sampler.columns, batch_rows=batch_rows):
            yield sampler(pa.Table.from_batches([batch]), rng)


def shard_batches(
    path: str, *, columns: list[str] | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The record batches of one shard. A shard the manifest names but that is gone,
    damaged (a partial copy, a bad disk) or unreadable (permissions, credentials)
    is a `VidrayError` naming the file and what to do."""
    try:
        # Read and decoded on the calling thread: a read task starts no Arrow pool
        # threads (it has one CPU, and pool threads would outlive it in the worker).
        # Only a remote file pre-buffers, on Arrow's I/O threads: it saves round trips.
        # The file closes once the shard is read, not whenever a GC pass finds it.
        with pq.ParquetFile(storage.open_input(path), pre_buffer=storage.is_uri(path)) as parquet:
            yield from parquet.iter_batches(
                batch_size=batch_rows, columns=columns, use_threads=False
            )
    except (pa.ArrowException, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        repair = (
            "delete it and run `vidray ingest` again with the same config, which "
            "re-ingests the videos whose shards are gone"
        )
        if isinstance(exc, FileNotFoundError):
            message = (
                f"missing window shard {path} ({reason}): "
                "run `vidray ingest` again with the same config"
            )
        elif isinstance(exc, pa.ArrowInvalid):  # not Parquet, or cut short
            message = f"damaged window shard {path} ({reason}): {repair}"
        else:  # the storage refused or failed: the file may well be intact
            message = (
                f"cannot read window shard {path} ({reason}): check access; if damaged, {repair}"
            )
        raise VidrayError(message) from exc


@dataclass(frozen=True)
class ShardReader:
    """Ray Data stage: a batch of shard paths -> batches of clips.

    One task reads a group of shards with pyarrow. Ray's own `read_parquet`
    starts a read task per file, which costs ~60 ms each: at one shard per
    video segment that overhead, paid every epoch, exceeded the reading itself.
    Called on a batch, a training sampler draws from fresh entropy; seeded training
    reads through `EpochReader`.
    """

    sampler: Any  # ClipSampler, or any callable (Table, rng) -> batch with a `columns` list
    batch_rows: int = 32

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        yield from self.read(batch["path"])

    def read(
        self, paths: Iterable[str], seeds: Iterable[int] | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """The clips of ``paths``; each shard's drawn from its seed, if given."""
        yield from clips_from_shards(paths, self.sampler, batch_rows=self.batch_rows, seeds=seeds)


def shard_group_order(seed: int, epoch: int, groups: int) -> list[int]:
    """The order in which seeded training reads its ``groups`` shard groups in ``epoch``."""
    draws = np.random.SeedSequence([seed, epoch], spawn_key=(SHARD_ORDER,))
    return np.random.default_rng(draws).permutation(groups).tolist()


def shard_clip_seed(seed: int, epoch: int, shard: int) -> int:
    """The seed of the clips drawn in ``epoch`` from shard number ``shard`` (its place
    among the split's sorted shards)."""
    draws = np.random.SeedSequence([seed, epoch], spawn_key=(SHARD_CLIPS, shard))
    return int(draws.generate_state(1, np.uint64)[0])


class EpochClock:
    """The epoch a training run is in, held by a Ray actor (`start_epoch_clock`): the
    training loop sets it before it reads an epoch's clips, and the read tasks of a
    seeded training split (`EpochReader`) ask it which epoch they draw for.

    Only the loop knows the real epoch: a run resumed from a checkpoint
    (``train.resume_from``, a resumed sweep, a restarted worker group) goes on at
    epoch k. Ray Data's own per-execution seeds count the executions of one Dataset
    object instead, from 0 again in every new driver and worker group, so a resumed
    epoch k would draw epoch 1's shard order and clips again.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


def start_epoch_clock() -> Any:
    """A new `EpochClock` actor (needs a running Ray); it lives as long as its handle."""
    import ray

    # No CPU: it only answers, and a trial's or a small cluster's CPUs are all spoken for.
    return ray.remote(EpochClock).options(num_cpus=0).remote()


@dataclass(frozen=True)
class EpochReader:
    """Ray Data stage of seeded training: slots -> the clips of the shard groups that
    take those slots in the epoch ``clock`` says.

    The shards are read in groups of ``shards_per_task`` (one read task each, as
    `ShardReader` explains); group order and each shard's clips follow from
    (``seed``, epoch, shard) alone (`shard_group_order`, `shard_clip_seed`), so an
    epoch reads the same in every run with that seed, whether it runs on, resumes
    from a checkpoint or restarts its workers.
    """

    reader: ShardReader
    files: tuple[str, ...]  # the split's shards, sorted
    shards_per_task: int
    seed: int
    clock: Any  # an EpochClock actor

    @property
    def groups(self) -> int:
        return math.ceil(len(self.files) / self.shards_per_task)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        import ray

        epoch = ray.get(self.clock.get.remote())
        for slot in batch["slot"]:
            yield from self.read(int(slot), epoch)

    def read(self, slot: int, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The clips of the shard group read ``slot``-th in ``epoch``."""
        first = shard_group_order(self.seed, epoch, self.groups)[slot] * self.shards_per_task
        shards = range(first, min(first + self.shards_per_task, len(self.files)))
        yield from self.reader.read(
            [self.files[s] for s in shards], [shard_clip_seed(self.seed, epoch, s) for s in shards]
        )


def read_clips(
    data_dir: str | Path,
    *,
    split: str,
    clip: ClipConfig,
    flow_L: int,
    train: bool,
    seed: int | None = None,
    clock: Any = None,
    shards_per_task: int = 16,
    temporal_views: int = 1,
    spatial_views: int = 1,
    video_ids: bool = False,
) -> Any:
    """A Ray Dataset of clip batches for one split (needs a running Ray).

    Each execution (each epoch) re-derives the clips, so training sees new
    offsets, crops and flips every epoch; in training the shard groups also
    come in a new order. With a ``seed`` both follow from it and the epoch
    ``clock`` says (`read_samples`), so two runs with one seed read the same
    clips. Evaluation may ask for several views per window and for the
    ``video_id`` of every clip, as `iter_clip_batches` does.
    """
    sampler = ClipSampler(clip, flow_L, train, temporal_views, spatial_views, video_ids)
    views = temporal_views * spatial_views
    reader = ShardReader(sampler, batch_rows=max(1, ShardReader.batch_rows // views))
    return read_samples(
        data_dir,
        split=split,
        reader=reader,
        train=train,
        seed=seed,
        clock=clock,
        shards_per_task=shards_per_task,
    )


def read_samples(
    data_dir: str | Path,
    *,
    split: str,
    reader: ShardReader,
    train: bool,
    seed: int | None = None,
    clock: Any = None,
    shards_per_task: int = 16,
) -> Any:
    """A Ray Dataset of what ``reader``'s sampler derives from one split's shards: groups
    of ``shards_per_task`` shards per read task, in a new order every training epoch.

    With a ``seed``, training draws the order and every shard's clips from the seed, the
    epoch ``clock`` says (an `EpochClock` the training loop sets) and the shard
    (`EpochReader`): new every epoch, the same in every run with that seed, resumed or
    not. Without one they come from fresh entropy.
    """
    import ray

    read_dataset_info(data_dir)  # a clear error for a directory that is not an ingest output
    files = window_files(data_dir, split=split)
    groups = math.ceil(len(files) / shards_per_task)
    if train and seed is not None:
        if clock is None:
            raise ValueError("a seeded training read needs the EpochClock the loop sets")
        slots = ray.data.from_items(
            [{"slot": g} for g in range(groups)], override_num_blocks=groups
        )
        return slots.map_batches(
            EpochReader(reader, tuple(files), shards_per_task, seed, clock), batch_size=1
        )
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=groups)
    if train:
        ds = ds.randomize_block_order()
    return ds.map_batches(reader, batch_size=shards_per_task)


def iter_clip_batches(
    data_dir: str | Path,
    *,
    split: str,
    clip: ClipConfig,
    flow_L: int,
    train: bool = False,
    batch_rows: int = 32,
    temporal_views: int = 1,
    spatial_views: int = 1,
    video_ids: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """The same clips in-process, without Ray: for evaluation and tests.

    Evaluation can ask for several views per window (``batch_rows`` windows
    then give ``batch_rows * temporal_views * spatial_views`` clips) and for the
    ``video_id`` strings of the clips, which the Ray training path never reads.
    """
    yield from clips_from_shards(
        window_files(data_dir, split=split),
        ClipSampler(clip, flow_L, train, temporal_views, spatial_views, video_ids),
        batch_rows=batch_rows,
    )


def hflip(
    frames: np.ndarray, flow: np.ndarray | None = None, boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A clip mirrored left to right: frames (T, H, W, C) and quantized flow
    (T, H, W, 2) along W, with flow's x negated, and normalised (x1, y1, x2, y2)
    boxes mirrored. The one flip of training, for clips and keyframes alike."""
    frames = frames[:, :, ::-1]
    if flow is not None:
        # Quantization is symmetric about 127.5, so negating x is 255 - q exactly.
        flow = flow[:, :, ::-1].copy()
        flow[..., 0] = 255 - flow[..., 0]
    if boxes is not None:
        boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
    return frames, flow, boxes


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
