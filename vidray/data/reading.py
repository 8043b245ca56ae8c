"""Reading clips out of a dataset's shards: with Ray Data for training and evaluation,
or in-process for tests and small evaluations.

A read task takes a group of shards, reads the columns its sampler needs and
derives clips from each batch of window rows (`vidray.data.clips.ClipSampler`).
Training reads the groups in a new order every epoch; with ``train.seed`` the
order and every shard's clips follow from (seed, epoch, shard) alone.

    ds = read_clips(data_dir, split="train", clip=cfg.clip, flow_L=cfg.flow.L, train=True)
    for batch in ds.iter_torch_batches(batch_size=16): ...   # Ray Data
    for batch in iter_clip_batches(data_dir, split="val", ...): ...  # in-process, no Ray
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidray import storage
from vidray.config import ClipConfig
from vidray.data.clips import ClipSampler
from vidray.data.manifest import read_dataset_info, split_shards, window_files
from vidray.errors import VidrayError

# What a draw from (train.seed, epoch) is for: numpy spawn keys, so these streams share
# no seed with each other nor with the loop's local shuffle ([seed, epoch, rank]).
SHARD_ORDER, SHARD_CLIPS = 0, 1
# What one read task reads of a shard: (its place among the split's sorted shards, part,
# parts), part k of n being the shard's row groups [G*k//n, G*(k+1)//n) of its G. A
# packed shard (`ingest.shard_mb`) holds hundreds of windows: whole, it would be one
# task of seconds, and a small split of few shards would leave CPUs idle.
Part = tuple[int, int, int]

# CPU seconds a read task aims at: the ~60 ms Ray spends on a task is small beside it,
# and an epoch's last task, which may run alone, is short.
TASK_SECONDS = 0.75
# Read tasks an epoch has at least per CPU of the cluster, so that a small split spreads
# over every CPU and the last round of tasks leaves few slots idle.
TASKS_PER_CPU = 4
# CPU seconds per stored pixel of a clip frame (read, JPEG decode, crop), measured at
# 23-27 ns for 16 frames at 128 px (R(2+1)D-18's input) and 32 at 256 px (SlowFast's).
PIXEL_SECONDS = 25e-9
# What a window is estimated at when the dataset keeps its source size or a clip its
# model's T (not known here).
DEFAULT_SHORT_SIDE, DEFAULT_T = 256, 16


def clips_from_shards(
    paths: Iterable[str],
    sampler: Any,
    *,
    batch_rows: int,
    seeds: Iterable[int | None] | None = None,
    parts: Iterable[tuple[int, int]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Read shards, or parts (k, n) of them (`Part`), only the columns the clip needs,
    and derive their clips batch by batch; a training sampler draws from a generator
    seeded by the shard's (part's) seed."""
    paths = list(paths)
    seeds = [None] * len(paths) if seeds is None else seeds
    parts = [(0, 1)] * len(paths) if parts is None else parts
    for path, seed, part in zip(paths, seeds, parts, strict=True):
        rng = np.random.default_rng(seed)
        batches = shard_batches(path, columns=sampler.columns, batch_rows=batch_rows, part=part)
        for batch in batches:
            yield sampler(pa.Table.from_batches([batch]), rng)


def shard_batches(
    path: str, *, columns: list[str] | None, batch_rows: int, part: tuple[int, int] = (0, 1)
) -> Iterator[pa.RecordBatch]:
    """The record batches of one shard, or of part (k, n) of its row groups. A shard the
    manifest names but that is gone, damaged (a partial copy, a bad disk) or unreadable
    (permissions, credentials) is a `VidrayError` naming the file and what to do."""
    k, n = part
    try:
        # Read and decoded on the calling thread: a read task starts no Arrow pool
        # threads (it has one CPU, and pool threads would outlive it in the worker).
        # Only a remote file pre-buffers, on Arrow's I/O threads: it saves round trips.
        # The file closes once the shard is read, not whenever a GC pass finds it.
        with pq.ParquetFile(storage.open_input(path), pre_buffer=storage.is_uri(path)) as parquet:
            groups = parquet.metadata.num_row_groups
            row_groups = range(groups * k // n, groups * (k + 1) // n)
            if row_groups:  # pyarrow reads every group when given none
                yield from parquet.iter_batches(
                    batch_size=batch_rows,
                    row_groups=row_groups,
                    columns=columns,
                    use_threads=False,
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
    """Ray Data stage: a batch of shard groups -> batches of clips.

    One task reads a group of shards or parts of shards (`task_groups`) with pyarrow.
    Ray's own `read_parquet` starts a read task per file, which costs ~60 ms each: at one
    shard per video segment that overhead, paid every epoch, exceeded the reading itself.
    Called on a batch, a training sampler draws from fresh entropy; seeded training
    reads through `EpochReader`.
    """

    sampler: Any  # ClipSampler, or any callable (Table, rng) -> batch with a `columns` list
    batch_rows: int = 32

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for paths, parts in zip(batch["paths"], batch["parts"], strict=True):  # a task a row
            yield from self.read(paths, parts=[(int(k), int(n)) for k, n in parts])

    def read(
        self,
        paths: Iterable[str],
        seeds: Iterable[int] | None = None,
        parts: Iterable[tuple[int, int]] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The clips of ``paths`` (or of parts (k, n) of them); each drawn from its seed,
        if given."""
        yield from clips_from_shards(
            paths, self.sampler, batch_rows=self.batch_rows, seeds=seeds, parts=parts
        )


def shard_group_order(seed: int, epoch: int, groups: int) -> list[int]:
    """The order in which seeded training reads its ``groups`` shard groups in ``epoch``."""
    draws = np.random.SeedSequence([seed, epoch], spawn_key=(SHARD_ORDER,))
    return np.random.default_rng(draws).permutation(groups).tolist()


def shard_clip_seed(seed: int, epoch: int, shard: int, part: int = 0) -> int:
    """The seed of the clips drawn in ``epoch`` from shard number ``shard`` (its place
    among the split's sorted shards), or from its ``part`` (`Part`)."""
    draws = np.random.SeedSequence([seed, epoch], spawn_key=(SHARD_CLIPS, shard, part))
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

    The shards are read in ``groups`` (`task_groups`, one read task each, as
    `ShardReader` explains); group order and each shard part's clips follow from
    (``seed``, epoch, shard, part) alone (`shard_group_order`, `shard_clip_seed`), so
    an epoch reads the same in every run with that seed and as many cluster CPUs (they
    set the parts), whether it runs on, resumes from a checkpoint or restarts its workers.
    """

    reader: ShardReader
    files: tuple[str, ...]  # the split's shards, sorted
    groups: tuple[tuple[Part, ...], ...]  # the shard parts each task reads
    seed: int
    clock: Any  # an EpochClock actor

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        import ray

        epoch = ray.get(self.clock.get.remote())
        for slot in batch["slot"]:
            yield from self.read(int(slot), epoch)

    def read(self, slot: int, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The clips of the shard group read ``slot``-th in ``epoch``."""
        parts = self.groups[shard_group_order(self.seed, epoch, len(self.groups))[slot]]
        yield from self.reader.read(
            [self.files[shard] for shard, _, _ in parts],
            [shard_clip_seed(self.seed, epoch, shard, k) for shard, k, _ in parts],
            [(k, n) for _, k, n in parts],
        )


def task_groups(
    windows: Sequence[int], *, per_task: float, min_tasks: int
) -> list[tuple[Part, ...]]:
    """Consecutive shards (``windows`` gives each one's window count) in read tasks of
    about ``per_task`` windows, smaller where that makes fewer than ``min_tasks`` tasks;
    a shard bigger than a task is read in as many parts (`Part`), one task each."""
    size = min(per_task, sum(windows) / max(1, min_tasks))
    groups: list[list[Part]] = []
    filled = 0.0
    for shard, count in enumerate(windows):
        parts = max(1, round(count / size))
        for part in range(parts):
            if not groups or filled + count / parts > size:
                groups.append([])
                filled = 0.0
            groups[-1].append((shard, part, parts))
            filled += count / parts
    return [tuple(group) for group in groups]


def windows_per_task(info: dict[str, Any], clip: ClipConfig, flow_L: int, views: int) -> float:
    """How many windows make a read task of about `TASK_SECONDS` of CPU, estimated from
    what a window's clips decode: ``views`` clips of T frames and ``flow_L`` flow
    fields at the stored size (not measured: the estimate needs no read before the
    first epoch, and `PIXEL_SECONDS` held within 20% for 112 and 224 crops)."""
    short = info.get("storage", {}).get("ingest.short_side") or DEFAULT_SHORT_SIDE
    pixels = short * short * 4 / 3  # stored frames are about 4:3
    seconds = views * ((clip.T or DEFAULT_T) + flow_L) * pixels * PIXEL_SECONDS
    return TASK_SECONDS / seconds


def read_clips(
    data_dir: str | Path,
    *,
    split: str,
    clip: ClipConfig,
    flow_L: int,
    train: bool,
    seed: int | None = None,
    clock: Any = None,
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
    per_task = windows_per_task(read_dataset_info(data_dir), clip, flow_L, views)
    return read_samples(
        data_dir,
        split=split,
        reader=reader,
        train=train,
        seed=seed,
        clock=clock,
        windows_per_task=per_task,
    )


def read_samples(
    data_dir: str | Path,
    *,
    split: str,
    reader: ShardReader,
    train: bool,
    seed: int | None = None,
    clock: Any = None,
    windows_per_task: float = 64,
) -> Any:
    """A Ray Dataset of what ``reader``'s sampler derives from one split's shards: groups
    of about ``windows_per_task`` windows per read task (`task_groups`, and at least
    `TASKS_PER_CPU` tasks per CPU of the cluster), in a new order every training epoch;
    one task per CPU from each epoch's first second (`start_at_full_concurrency`).

    With a ``seed``, training draws the order and every shard's clips from the seed, the
    epoch ``clock`` says (an `EpochClock` the training loop sets) and the shard
    (`EpochReader`): new every epoch, the same in every run with that seed, resumed or
    not. Without one they come from fresh entropy.
    """
    import ray

    from vidray.data.read_start import start_at_full_concurrency

    read_dataset_info(data_dir)  # a clear error for a directory that is not an ingest output
    shards = split_shards(data_dir, split=split)
    files = [path for path, _ in shards]
    cpus = ray.cluster_resources().get("CPU", 1.0)
    groups = task_groups(
        [n for _, n in shards],
        per_task=windows_per_task,
        min_tasks=math.ceil(TASKS_PER_CPU * cpus),
    )
    if train and seed is not None:
        if clock is None:
            raise ValueError("a seeded training read needs the EpochClock the loop sets")
        slots = ray.data.from_items(
            [{"slot": g} for g in range(len(groups))], override_num_blocks=len(groups)
        )
        ds = slots.map_batches(
            EpochReader(reader, tuple(files), tuple(groups), seed, clock), batch_size=1
        )
        return start_at_full_concurrency(ds)
    tasks = [
        {"paths": [files[s] for s, _, _ in group], "parts": [[k, n] for _, k, n in group]}
        for group in groups
    ]
    ds = ray.data.from_items(tasks, override_num_blocks=len(groups))
    if train:
        ds = ds.randomize_block_order()
    return start_at_full_concurrency(ds.map_batches(reader, batch_size=1))


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
