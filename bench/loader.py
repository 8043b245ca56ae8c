"""Benchmark: the training read path against a K-process ceiling, and what a clip costs.

Two realistic clip recipes, each on its own ingest of one generated motion dataset
(default 32 videos of 64 frames at 10 fps, 320x256, so 256 px short side; stored at
10 fps in windows of 32 frames, JPEG frames, no flow):

- **R(2+1)D-18**: 16 frames at stride 2, crop 112, from windows stored at 128 px;
  a GPU training it takes ~400 clips/s;
- **SlowFast R50**: 32 frames at stride 1 (the windows hold 32), crop 224, from
  windows stored at 256 px; ~100 clips/s a GPU.

For each recipe, on a manifest that lists every train shard ``--copies`` times
(symlinks, so an epoch lasts a few seconds), two sides run in turn ``--repeats``
times each (default 3; all printed, the median counts):

- **Ray Data**: the training read path as a Ray Train worker reads it:
  ``read_clips(..., train=True)`` through the run's ``DataConfig``
  (``vidray.train.driver.data_config``: its execution options and a streaming
  split) and consumed by ``vidray.train.tasks.shard_batches`` (the loop's torch
  batches, local shuffle buffer) in this process; one untimed warm-up epoch first.
  Slot use comes from the task timeline (``ray.timeline()``): the busy time of
  Ray Data's map tasks / (CPUs x epoch wall time).
- **ceiling**: K plain processes (multiprocessing, spawn; K = the CPUs Ray has),
  each running the in-process loader (``clips_from_shards`` with the same
  ``ClipSampler``) over 1/K of the same shards at the same time. On a shared
  machine that is what K cores really give, which one process x K is not.

    ratio = Ray Data clips/s / ceiling clips/s          target >= 0.9

Then, on ONE core in this process, the CPU-ms per clip of each stage of a training
clip: read (Parquet, the columns the sampler needs), select (the T entries picked,
in place in Arrow's buffers), decode (OpenCV, JPEG straight to RGB), crop and flip
(the cut into the batch; "flip" for the half of the clips mirrored, as in training)
and batch (allocating it); Ray transport is the Ray side's CPU-ms per clip
(all its processes) less the in-process loader's. From those: the cores a GPU
needs at its clip rate through each path. Targets on one core, in-process:
R(2+1)D clip <= 5 CPU-ms, SlowFast clip <= 35 CPU-ms.

CPU time (user+sys of this process tree, by role: driver, workers, Ray daemons)
does not move with other users' load; wall time does, so load averages are
printed before and after.

    PYTHONPATH=. python bench/loader.py            # default sizes (~3-4 min on 2 cores)
    PYTHONPATH=. python bench/loader.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchutil as bu
import cv2
import numpy as np
import pyarrow as pa

from vidray.config import ClipConfig, load_config
from vidray.data.clips import ClipSampler
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest, window_files, write_manifest
from vidray.data.reading import clips_from_shards, read_clips, shard_batches
from vidray.data.shards import StoredEntries, cut_region
from vidray.train.tasks import shard_batches as training_batches

SPLIT = "train"
BATCH = 32  # window rows per read batch, as ShardReader reads them
TARGET_RATIO = 0.9
# "flip" is the cut of a mirrored clip, "crop" of the others (one OpenCV copy either way).
STAGES = ("read", "select", "decode", "crop", "flip", "batch")


@dataclass(frozen=True)
class Recipe:
    name: str
    clip: ClipConfig
    short_side: int  # stored
    gpu_clips_per_s: int  # what one GPU training it consumes
    budget_ms: float  # target CPU-ms per clip on one core
    copies: int  # shard copies in the timed epoch (an epoch of a few seconds)


RECIPES = [
    Recipe("R(2+1)D-18", ClipConfig(T=16, stride=2, crop=112), 128, 400, 5.0, 48),
    Recipe("SlowFast R50", ClipConfig(T=32, stride=1, crop=224), 256, 100, 35.0, 6),
]


def replicate(data: Path, copies: int, dst: Path) -> Path:
    """An ingest output whose windows/ links every shard of `data` `copies` times."""
    (dst / "windows").mkdir(parents=True, exist_ok=True)
    (dst / "dataset.yaml").write_bytes((data / "dataset.yaml").read_bytes())
    rows = read_manifest(data)
    for row in rows:
        linked, counts = [], []
        windows = row.get("shard_windows") or [None] * len(row["shards"])
        for shard, n in zip(row["shards"], windows, strict=True):
            for i in range(copies):
                link = dst / "windows" / f"{i:03d}-{shard}"
                if not link.exists():
                    link.symlink_to(data / "windows" / shard)
                linked.append(link.name)
                counts.append(n)
        row["shards"] = linked
        if row.get("shard_windows"):
            row["shard_windows"] = counts
    write_manifest(dst, rows)
    return dst


def ceiling_share(share: tuple[list[str], ClipConfig]) -> int:
    """One ceiling process's work: the in-process loader over its share of the shards."""
    files, clip = share
    sampler = ClipSampler(clip, 0, True)
    return sum(len(b["label"]) for b in clips_from_shards(files, sampler, batch_rows=BATCH))


class TrainingReadPath:
    """The training read path on one dataset: `epoch` times one epoch of it."""

    def __init__(self, data: Path, clip: ClipConfig) -> None:
        self.cfg = load_config(None, [f"train.data={data}"])
        ds = read_clips(data, split=SPLIT, clip=clip, flow_L=0, train=True)
        self.shard = bu.training_shard(ds, self.cfg)
        self.windows: list[tuple[float, float]] = []
        self._clips()  # worker start-up, imports, the split coordinator: untimed

    def _clips(self) -> int:
        batches = training_batches(self.shard, self.cfg, train=True, pin=False, seed=None)
        return sum(len(b["label"]) for b in batches)

    def epoch(self) -> bu.Run:
        meter = bu.CpuMeter()
        meter.start()
        start, t0 = time.time(), time.perf_counter()
        clips = self._clips()
        run = bu.Run(units=clips, seconds=time.perf_counter() - t0, cpu=meter.stop())
        self.windows.append((start, time.time()))
        return run


def compare(
    recipe: Recipe, data: Path, pool: Any, *, cpus: int, repeats: int
) -> tuple[list[bu.Run], list[bu.Run]]:
    """The ceiling and the Ray Data side on the same epoch, ``repeats`` times each, in
    turn so both see the same load; the Ray epochs get their slot use."""
    files = [str(f) for f in window_files(data, split=SPLIT)]
    work = [(share, recipe.clip) for share in bu.shares(files, cpus)]
    bu.warm_ceiling(pool, ceiling_share, ([], recipe.clip), cpus)
    path = TrainingReadPath(data, recipe.clip)
    ceiling, ray_runs = [], []
    for _ in range(repeats):
        ceiling.append(bu.run_ceiling(pool, ceiling_share, work))
        ray_runs.append(path.epoch())
    for run, used in zip(ray_runs, bu.slot_use(path.windows, cpus), strict=True):
        run.slot_use = used
    return ceiling, ray_runs


def in_process(data: Path, clip: ClipConfig, repeats: int) -> list[bu.Run]:
    """The in-process loader (`clips_from_shards`, one thread) on one core, ``repeats`` epochs."""
    files = window_files(data, split=SPLIT)
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        clips = ceiling_share(([str(f) for f in files], clip))
        cpu = dict.fromkeys(bu.CPU_ROLES, 0.0)
        cpu["driver"] = time.process_time() - c0
        runs.append(bu.Run(units=clips, seconds=time.perf_counter() - t0, cpu=cpu))
    return runs


class StageClock:
    """CPU seconds (this process) summed per stage: ``with clock("decode"): ...``."""

    def __init__(self) -> None:
        self.cost = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.process_time()
        yield
        self.cost[stage] += time.process_time() - t0


def stage_costs(data: Path, clip: ClipConfig, seed: int = 0) -> tuple[dict[str, float], int]:
    """CPU seconds of each stage of a training clip over one epoch, in this process,
    following `ClipSampler`'s steps one by one: the batch's entries read in place
    (`StoredEntries`), each picked frame decoded (OpenCV, straight to RGB) and cut into
    the batch, mirrored for half the clips (`cut_region`, as `decode_crops` does)."""
    sampler = ClipSampler(clip, 0, True)
    rng = np.random.default_rng(seed)
    clock = StageClock()
    span, crop = (clip.T - 1) * clip.stride + 1, clip.crop
    clips = 0
    for path in window_files(data, split=SPLIT):
        batches = shard_batches(str(path), columns=sampler.columns, batch_rows=BATCH)
        while True:
            with clock("read"):
                batch = next(batches, None)
            if batch is None:
                break
            with clock("select"):
                table = pa.Table.from_batches([batch])
                stored = StoredEntries(table.column("frames"))
                heights, widths = (table.column(k).to_pylist() for k in ("height", "width"))
            with clock("batch"):
                out = np.empty((len(table), clip.T, crop, crop, 3), np.uint8)
            for r, (height, width) in enumerate(zip(heights, widths, strict=True)):
                entries = stored[r]
                start = int(rng.integers(0, len(entries) - span + 1))
                top = int(rng.integers(0, height - crop + 1))
                left = int(rng.integers(0, width - crop + 1))
                mirror = bool(rng.integers(0, 2))
                with clock("select"):
                    picked = entries[start : start + span : clip.stride]
                for i, entry in enumerate(picked):
                    with clock("decode"):
                        image = cv2.imdecode(entry, cv2.IMREAD_COLOR_RGB)
                    with clock("flip" if mirror else "crop"):
                        cut_region(image, top, left, mirror, out[r, i])
            clips += len(out)
    return clock.cost, clips


def recipe_report(
    recipe: Recipe,
    ceiling: list[bu.Run],
    ray_runs: list[bu.Run],
    one_core: list[bu.Run],
    stages: dict[str, float],
    clips: int,
    cpus: int,
) -> tuple[float, float]:
    """Prints the recipe's runs and stage table; returns (ratio, one-core CPU-ms per clip)."""
    print()
    print(
        bu.table(
            bu.RUN_HEADERS,
            bu.run_rows(f"ceiling: {cpus} processes", ceiling, cpus)
            + bu.run_rows("Ray Data (training path)", ray_runs, cpus)
            + bu.run_rows("in-process, one core", one_core, 1),
            title=f"{recipe.name}: clips/s of one epoch (units = clips); CPU-ms per clip by role",
        )
    )
    ceil, ray, one = (bu.median_run(r) for r in (ceiling, ray_runs, one_core))
    transport = ray.cpu_ms() - one.cpu_ms()
    rows = [[stage, 1000 * seconds / clips] for stage, seconds in stages.items()]
    # The stages re-enact the sampler's steps with the public pieces; when ClipSampler
    # itself cuts clips another way (cropping before it decodes), the two totals differ.
    rows.append(["sum of the stages above", 1000 * sum(stages.values()) / clips])
    rows.append(["Ray transport (Ray CPU-ms/clip - in-process)", transport])
    rows.append(["total in-process (median epoch, ClipSampler)", one.cpu_ms()])
    rows.append(["total through Ray Data (median epoch, all roles)", ray.cpu_ms()])
    print()
    print(
        bu.table(
            ["stage, one core", "CPU-ms/clip"],
            rows,
            title=f"{recipe.name}: where a clip's CPU goes",
        )
    )
    rate = recipe.gpu_clips_per_s
    print(
        f"{recipe.name}: cores per GPU at {rate} clips/s: {rate * one.cpu_ms() / 1000:.1f} "
        f"in-process, {rate * ray.cpu_ms() / 1000:.1f} through Ray Data; "
        f"ceiling {ceil.rate:.1f} clips/s, Ray Data {ray.rate:.1f} clips/s, slot use "
        f"{100 * (ray.slot_use or 0):.0f}% (median epoch)"
    )
    print(
        f"{recipe.name}: the ratio is about CPU efficiency (ceiling CPU-ms / Ray CPU-ms per "
        f"clip: {ceil.cpu_ms() / ray.cpu_ms():.2f}) x how busy Ray keeps its CPUs "
        f"({100 * sum(ray.cpu.values()) / (ray.seconds * cpus):.0f}%) / how busy the "
        f"ceiling does ({100 * sum(ceil.cpu.values()) / (ceil.seconds * cpus):.0f}%)"
    )
    return ray.rate / ceil.rate, one.cpu_ms()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bu.add_dataset_args(parser, videos=32, frames=64)
    parser.set_defaults(size=(320, 256))
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each side")
    parser.add_argument(
        "--copies", type=float, default=1.0, help="scale each recipe's shard copies"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.copies = min(args.videos, 8), 0.25
    cpus = bu.cpu_count(args.cpus)
    bu.single_thread_opencv()

    print(f"bench/loader: {bu.load()} (before)")
    tag = bu.dataset_tag(args.videos, args.frames, args.video_fps, args.size)
    with bu.workdir(args.workdir) as work:
        videos = work / f"videos_{tag}"
        t_gen, paths = bu.timed(
            lambda: bu.make_videos(
                videos, videos=args.videos, frames=args.frames, fps=args.video_fps, size=args.size
            )
        )
        width, height = args.size
        print(
            f"dataset: {len(paths)} videos x {args.frames} frames at {args.video_fps:g} fps, "
            f"{width}x{height} (generated in {t_gen:.1f} s); split={SPLIT}, read batches of "
            f"{BATCH} windows"
        )
        t_init = bu.start_ray(cpus)
        print(
            f"ray: local, {cpus} CPUs (ray.init {t_init:.1f} s, untimed); ceiling: {cpus} processes"
        )
        lines = []
        with bu.ceiling_pool(cpus) as pool:
            for recipe in RECIPES:
                data = work / f"data_{tag}_{recipe.short_side}"
                if not (data / "dataset.yaml").exists():
                    extra = [f"ingest.short_side={recipe.short_side}", "flow.backend=none"]
                    run_ingest(bu.ingest_config(videos, data, extra), log=lambda _: None)
                copies = max(1, round(recipe.copies * args.copies))
                big = replicate(data, copies, work / f"data_{tag}_{recipe.short_side}_x{copies}")
                clip = recipe.clip
                print()
                print(
                    f"{recipe.name}: T={clip.T} stride {clip.stride} crop {clip.crop} from "
                    f"{recipe.short_side} px stored; epoch = train shards x{copies}"
                )
                ceiling, ray_runs = compare(recipe, big, pool, cpus=cpus, repeats=args.repeats)
                one_core = in_process(data, clip, args.repeats)
                stages, clips = stage_costs(data, clip)
                ratio, clip_ms = recipe_report(
                    recipe, ceiling, ray_runs, one_core, stages, clips, cpus
                )
                lines.append(
                    bu.target_line(
                        f"loader {recipe.name} Ray Data/{cpus}-process ceiling", ratio, TARGET_RATIO
                    )
                )
                lines.append(
                    bu.target_line(
                        f"clip CPU-ms {recipe.name} (one core)",
                        clip_ms,
                        recipe.budget_ms,
                        at_most=True,
                    )
                )
    print()
    print(f"bench/loader: {bu.load()} (after)")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
