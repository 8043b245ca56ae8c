"""Does the driver's work grow no faster than the dataset? Kinetics-sized planning, no video.

For N videos (10k, 50k, 250k; ``--quick``: 1k, 5k, 25k) it builds what ingest
would: a Kinetics annotation CSV over N empty files, and an ingest output of
tiny shards (one small row a window, written with `ShardWriter`) and the real
manifest. No frame is decoded: each file is taken for a 10 s 340x256 clip (a
Kinetics clip), which is all planning needs. Then it times the two things a
driver does before any task runs, with the package's own functions:

- ``plan_ingest``: list the sources (`list_sources`, layout kinetics), stat
  them (`source_entry`), plan their segments (`plan_segments`) and pack them
  into tasks, one shard each (`pack_segments` by ``ingest.shard_mb``);
- ``plan_epoch``: read the manifest, find each shard's windows of the train
  split (`split_shards`) and group shards into read tasks as
  `vidray.data.reading.read_samples` does (`task_groups`: its default windows a
  task, at least ``TASKS_PER_CPU`` tasks a CPU of the cluster).

It prints per size the CPU seconds (median of 3) and the peak Python memory
(tracemalloc, one more run) of each, the files and read tasks an epoch has (and
the files one shard a video segment, the layout before packing, would have),
then the log-log slope over the sizes of each, with one line per target:
``exponent NAME = X (target <= 1.1) ok``. Run as ``python bench/scale.py``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidray.config import Config, load_config
from vidray.data import reading
from vidray.data.ledger import video_row
from vidray.data.manifest import WINDOWS_DIR, split_shards, write_manifest
from vidray.data.segments import (
    pack_segments,
    plan_segments,
    scratch_dir,
    source_entry,
    task_shard,
    window_bytes,
)
from vidray.data.shards import ShardWriter
from vidray.data.sources import list_sources
from vidray.data.window_rows import video_fields

SIZES = (10_000, 50_000, 250_000)
QUICK_SIZES = (1_000, 5_000, 25_000)
# The cluster the tasks are planned for: its CPUs set the least number of tasks.
CLUSTER_CPUS = 64
# A Kinetics clip as the probe would see it.
CLIP = {"duration": 10.0, "fps": 25.0, "width": 340, "height": 256, "num_frames": 250}
CLASSES = 400
VAL_EVERY = 10  # one video in ten is in val, as Kinetics-400's 20k of 260k
EXPONENT_TARGET = 1.1
REPEATS = 3


def write_listing(root: Path, videos: int) -> Path:
    """A Kinetics annotation CSV over ``videos`` empty clip files under ``root``."""
    clips = root / "clips"
    clips.mkdir(parents=True)
    annotations = root / "kinetics.csv"
    with annotations.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for i in range(videos):
            youtube_id = f"yt{i:09d}"
            split = "val" if i % VAL_EVERY == 0 else "train"
            writer.writerow([f"class{i % CLASSES:03d}", youtube_id, 0, 10, split])
            (clips / f"{youtube_id}_000000_000010.mp4").touch()
    return annotations


def plan_ingest(annotations: Path, cfg: Config) -> list[list[dict[str, Any]]]:
    """The driver's planning path over every listed file: the tasks, a shard each."""
    ingest = cfg.ingest
    listing = list_sources(str(annotations), layout="kinetics", val_fraction=0)
    segments = []
    for source in listing.entries:
        probed = dict(source_entry(source), **CLIP)
        segments.extend(plan_segments(probed, ingest))
    total = sum(segment["windows"] for segment in segments)
    return pack_segments(
        segments,
        windows_per_task=max(1, math.ceil(total / (2 * CLUSTER_CPUS))),
        bytes_per_task=ingest.shard_mb * 1e6,
        bytes_of=lambda segment: window_bytes(segment, ingest, cfg.flow),
    )


def write_output(output: Path, tasks: list[list[dict[str, Any]]], cfg: Config) -> None:
    """Each task's shard, of one tiny row a window, and the manifest of every video."""
    records: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        shard = task_shard(task)
        writer = ShardWriter(
            output / WINDOWS_DIR / shard, tmp_dir=scratch_dir(str(output)), rows_per_group=4096
        )
        for segment in task:
            for window in range(segment["windows"]):
                writer.add(tiny_row(segment, segment["first_window"] + window))
            record = {**segment, "n_windows": segment["windows"], "padded": 0, "shard": shard}
            records.setdefault(segment["video_id"], []).append(dict(record, error=None))
        writer.commit()
    write_manifest(output, [video_row(r, cfg.ingest) for r in records.values()])


def tiny_row(segment: dict[str, Any], window: int) -> dict[str, Any]:
    """One row of one window whose frame and flow are a single pixel."""
    return {
        **video_fields(segment),
        "window_idx": window,
        "start_sec": window * 3.2,
        "fps": 10.0,
        "height": 1,
        "width": 1,
        "padded": 0,
        "frames_codec": "raw",
        "frames": [b"\0\0\0"],
        "flow_codec": "raw",
        "flow": None,
        "flow_bound": 20.0,
    }


def plan_epoch(output: Path) -> tuple[int, int]:
    """The train split's shards and read tasks, as the training read path plans them."""
    shards = split_shards(output, split="train")
    per_task = inspect.signature(reading.read_samples).parameters["windows_per_task"].default
    groups = reading.task_groups(
        [n for _, n in shards],
        per_task=per_task,
        min_tasks=math.ceil(reading.TASKS_PER_CPU * CLUSTER_CPUS),
    )
    return len(shards), len(groups)


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(median CPU seconds of `REPEATS` runs, peak traced MB of one more, fn's result)."""
    seconds = []
    for _ in range(REPEATS):
        start = time.process_time()
        result = fn()
        seconds.append(time.process_time() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return statistics.median(seconds), peak, result


def slope(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) over log(size)."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(max(v, 1e-9)) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def run_size(videos: int, cfg: Config) -> dict[str, Any]:
    """One size: build the listing and the output in a temp dir, and measure both plans."""
    with tempfile.TemporaryDirectory(prefix="vidray-scale-") as tmp:
        root = Path(tmp)
        annotations = write_listing(root / "kinetics", videos)
        ingest_s, ingest_mb, tasks = measure(lambda: plan_ingest(annotations, cfg))
        built = time.perf_counter()
        write_output(root / "data", tasks, cfg)
        built = time.perf_counter() - built
        epoch_s, epoch_mb, (_, read_tasks) = measure(lambda: plan_epoch(root / "data"))
        files = len(list((root / "data" / WINDOWS_DIR).glob("*.parquet")))
    return {
        "plan_ingest": ingest_s,
        "plan_ingest_mb": ingest_mb,
        "plan_epoch": epoch_s,
        "plan_epoch_mb": epoch_mb,
        "files": files,
        "read_tasks": read_tasks,
        "before": sum(len(task) for task in tasks),  # one shard a segment, before packing
        "build": built,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k/5k/25k videos")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    cfg = load_config(None, [])
    shard_mb = cfg.ingest.shard_mb
    print(
        f"scale: tasks planned for a cluster of {CLUSTER_CPUS} CPUs; ingest.shard_mb={shard_mb:g}"
    )
    print(
        f"{'videos':>8} {'plan_ingest s':>13} {'MB':>7} {'plan_epoch s':>12} {'MB':>7} "
        f"{'files':>6} {'read tasks':>10} {'files before':>12} {'build s':>8} {'load':>5}"
    )
    table: dict[str, list[float]] = {}
    for videos in sizes:
        row = run_size(videos, cfg)
        for name in ("plan_ingest", "plan_ingest_mb", "plan_epoch", "plan_epoch_mb"):
            table.setdefault(name, []).append(row[name])
        table.setdefault("files", []).append(row["files"])
        table.setdefault("read_tasks", []).append(row["read_tasks"])
        print(
            f"{videos:>8} {row['plan_ingest']:>13.2f} {row['plan_ingest_mb']:>7.1f} "
            f"{row['plan_epoch']:>12.3f} {row['plan_epoch_mb']:>7.1f} {row['files']:>6} "
            f"{row['read_tasks']:>10} {row['before']:>12} {row['build']:>8.1f} "
            f"{os.getloadavg()[0]:>5.1f}"
        )
    for name, values in table.items():
        exponent = slope(list(sizes), values)
        verdict = "ok" if exponent <= EXPONENT_TARGET else "ABOVE TARGET"
        print(f"exponent {name} = {exponent:.2f} (target <= {EXPONENT_TARGET}) {verdict}")


if __name__ == "__main__":
    main()
