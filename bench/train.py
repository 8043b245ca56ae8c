"""Benchmark: training clips/s, 1 vs 2 Ray Train workers, and whether the loader keeps up.

A generated motion dataset (default 48 videos of 160 frames at 10 fps, 192x144) is
ingested once with the storage of ``--config`` (default ``configs/demo.yaml``: short
side 64, windows of 16 frames at stride 8; no optical flow unless the model reads
it), then two measurements run on it, with the config's model and clip (default
simple3d, width 16, T=8 at stride 2, crop 56; ``--model`` picks another family at
its declared clip, ``--set key=value`` changes anything else):

- **scaling**: the real training path, ``vidray.train.driver.run_training``, with
  ``train.workers=1`` and then ``=2`` on the same data, each worker asking for
  ``--cpus-per-worker`` CPUs (default 0.5: two workers fit on 2 cores and leave room
  for Ray Data's readers). Clips/s is what the run logs to MLflow
  (``time/clips_per_s`` per epoch, read back with MlflowClient, SQLite in the work
  dir): all ranks' clips over rank 0's epoch time, validation excluded; the first
  epoch is a warm-up and does not count when there are more. By default both runs
  use the same *global* batch (``--same global``: 1 worker x 2B, 2 workers x B), so
  they take the same optimiser steps on the same effective batch, train the same
  model, and only the speed differs; ``--same per-worker`` keeps B per worker
  instead (what adding a worker to a config does; the global batch then doubles).

      ratio 2w/1w = clips/s(2 workers) / clips/s(1 worker)     2.0 = linear scaling

- **loader-bound**: one trainer in this process, without Ray Train (no DDP), with
  as many torch threads as a Ray Train worker gets:
  (a) loader alone: ``read_clips(...)`` through the run's ``DataConfig`` (its
      execution options and streaming split, as a Ray Train worker gets it), read
      by the loop's ``vidray.train.tasks.shard_batches`` (batch B, the same local
      shuffle buffer): the stream ``train_loop_per_worker`` reads;
  (b) step alone: ``vidray.train.loop.train_epoch`` (forward, backward, optimiser
      step: the loop's own step, with its uint8 -> float conversion) on pre-generated
      random uint8 batches of the shape (a) yields;
  (c) both: ``train_epoch`` reading the stream of (a), as the loop does.
  Each runs one untimed warm-up epoch, then at least 3 whole epochs and
  ``--min-seconds``; the median epoch counts (all are printed).

      ratio together/min(alone) = clips/s(c) / min(clips/s(a), clips/s(b))

  1.0 means the slower side alone sets the pace: the other side hides behind it
  completely (the smaller of (a) and (b) is the bottleneck: the loader when (a) is
  smaller). No overlap at all (read, then step, one after the other) would give
  a*b/(a+b) / min(a, b), printed beside it; below that, reading and stepping also
  slow each other down (they share the same cores).

``--use-gpu`` trains on CUDA as the loop does there: bf16 autocast (unless
``--set train.precision=...``), 3D weights and clips channels-last, pinned batches.
The scaling part then needs 2 GPUs (it is skipped, with a line saying so, on one).
Load averages are printed before and after: wall-clock rates move with other
users' load on a shared machine.

    PYTHONPATH=. python bench/train.py            # default sizes (~2.5 min on 2 cores)
    PYTHONPATH=. python bench/train.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import benchutil as bu
import torch

from vidray import tracking
from vidray.config import Config, load_config
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.data.reading import read_clips
from vidray.device import channels_last
from vidray.train.driver import run_training, steps_per_epoch
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model, make_optimizer, train_epoch
from vidray.train.schedule import Scheduler
from vidray.train.tasks import shard_batches, task_of

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
SPLIT = "train"
# Every class has a video in val (the loop validates each epoch); the rest trains.
SPLITS = ["ingest.val_fraction=0.125", "ingest.test_fraction=0"]


def make_config(args: argparse.Namespace, videos: Path, work: Path) -> Config:
    """The config both measurements use, its clip resolved and its storage fitted to it."""
    overrides = list(SPLITS)
    if args.model:
        # Another family at its own declared clip and knobs, not the config's.
        overrides += [f"model.name={args.model}"] + [
            f"{key}=null" for key in ("model.width", "model.dropout", "clip.T", "clip.crop")
        ]
    if args.use_gpu:
        overrides += ["train.use_gpu=true", "train.precision=bf16"]
    overrides += [
        *args.set,
        f"ingest.input={videos}",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        "mlflow.experiment=bench-train",
        f"train.storage_path={work / 'runs'}",
        f"train.cpus_per_worker={args.cpus_per_worker}",
        f"train.epochs={args.epochs}",
    ]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    cfg = resolve_inputs(load_config(args.config, overrides))
    # Stored windows long and large enough for the clip; flow only for flow-reading models.
    clip, ingest = cfg.clip, cfg.ingest
    span = (clip.T - 1) * clip.stride + 1
    window = max(ingest.window_frames, span)
    ingest = replace(
        ingest,
        window_frames=window,
        window_stride=ingest.window_stride if window == ingest.window_frames else window // 2,
        short_side=max(ingest.short_side, clip.crop) if ingest.short_side else 0,
    )
    flow = cfg.flow if cfg.flow.L else replace(cfg.flow, backend="none")
    tag = bu.dataset_tag(args.videos, args.frames, args.video_fps, args.size)
    tag += f"_ss{ingest.short_side}_w{ingest.window_frames}s{ingest.window_stride}_{flow.backend}"
    ingest = replace(ingest, output=str(work / f"data_{tag}"))
    return replace(cfg, ingest=ingest, flow=flow, train=replace(cfg.train, data=ingest.output))


def split_windows(data: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_manifest(data):
        if row["status"] == "ok":
            counts[row["split"]] = counts.get(row["split"], 0) + row["n_windows"]
    return counts


# --- scaling: the real training path, 1 vs 2 workers


def scaling_run(cfg: Config, workers: int, batch: int) -> dict[str, Any]:
    """One `run_training` fit; clips/s from the MLflow metrics, first epoch excluded."""
    cfg = replace(
        cfg,
        train=replace(
            cfg.train, workers=workers, batch_size=batch, run_name=f"bench-train-{workers}w"
        ),
    )
    result = run_training(cfg)
    client = tracking.client(result.tracking_uri)

    def history(key: str) -> list[float]:
        points = client.get_metric_history(result.run_id, key)
        return [p.value for p in sorted(points, key=lambda p: p.step)]

    rates, seconds = history(tracking.CLIPS_PER_SECOND), history(tracking.EPOCH_SECONDS)
    clips = [r * s for r, s in zip(rates, seconds, strict=True)]
    skip = 1 if len(rates) > 1 else 0
    return dict(
        workers=workers,
        batch=batch,
        epochs=rates,
        measured=len(rates) - skip,
        clips_per_epoch=round(clips[-1]),
        rate=sum(clips[skip:]) / sum(seconds[skip:]),
        epoch_s=sum(seconds[skip:]) / (len(rates) - skip),
        fit_s=result.seconds,
    )


def scaling(cfg: Config, args: argparse.Namespace) -> dict[int, dict[str, Any]] | None:
    import ray

    if cfg.train.use_gpu and ray.cluster_resources().get("GPU", 0) < 2:
        gpus = ray.cluster_resources().get("GPU", 0)
        print(f"scaling: skipped, 2 workers with use_gpu need 2 GPUs; this Ray has {gpus:g}")
        return None
    batch = cfg.train.batch_size
    batches = {1: 2 * batch if args.same == "global" else batch, 2: batch}
    return {n: scaling_run(cfg, n, batches[n]) for n in (1, 2)}


# --- loader-bound: loader alone, step alone, both, in this process


class InProcessTrainer:
    """The loop's model, optimiser and step, in this process (one worker, no DDP)."""

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, num_classes).to(device)
        self.model = channels_last(model)
        self.optimizer = make_optimizer(cfg.optim, self.model.parameters())
        self.scheduler = Scheduler(self.optimizer, cfg.optim, cfg.train.epochs, 1)

    def epoch(self, batches: Iterable[dict[str, torch.Tensor]]) -> int:
        totals, _ = train_epoch(
            self.model,
            batches,
            self.optimizer,
            self.scheduler,
            0,
            self.cfg,
            self.device,
            task=task_of(self.cfg),
        )
        return int(totals[2].item())


def measure(
    epoch: Callable[[], int], min_seconds: float, repeats: int = 3
) -> tuple[float, list[float], int]:
    """(median clips/s, clips/s of every timed epoch, clips/epoch): one untimed warm-up
    epoch, then whole epochs, at least ``repeats`` of them and ``min_seconds`` in all."""
    per_epoch = epoch()
    rates: list[float] = []
    elapsed = 0.0
    while len(rates) < repeats or elapsed < min_seconds:
        t0 = time.perf_counter()
        clips = epoch()
        seconds = time.perf_counter() - t0
        rates.append(clips / seconds)
        elapsed += seconds
    return statistics.median(rates), rates, per_epoch


def loader_bound(cfg: Config, min_seconds: float) -> dict[str, Any]:
    train = cfg.train
    device = torch.device("cuda" if train.use_gpu else "cpu")
    pin = device.type == "cuda"
    num_classes = len(read_dataset_info(train.data)["classes"])
    ds = read_clips(train.data, split=SPLIT, clip=cfg.clip, flow_L=cfg.flow.L, train=True)
    # As a worker of a 1-worker run reads: the run's DataConfig (its execution options,
    # a streaming split), then the loop's own torch batches (local shuffle buffer).
    shard = bu.training_shard(ds, cfg)

    def stream() -> Iterable[dict[str, torch.Tensor]]:
        return shard_batches(shard, cfg, train=True, pin=pin, seed=None)

    shapes: dict[str, tuple[int, ...]] = {}

    def read_epoch() -> int:
        clips = 0
        for batch in stream():
            shapes.setdefault("frames", tuple(batch["frames"].shape))
            if "flow" in batch:
                shapes.setdefault("flow", tuple(batch["flow"].shape))
            clips += len(batch["label"])
        return clips

    # The trainer's torch threads, as `train_loop_per_worker` sets them.
    torch.set_num_threads(max(1, int(train.cpus_per_worker)))
    out: dict[str, Any] = {"loader": measure(read_epoch, min_seconds)}

    # Synthetic batches shaped like the stream's, generated before the clock starts.
    generator = torch.Generator().manual_seed(0)
    full_batches = max(1, out["loader"][2] // train.batch_size)

    def synthetic_batch() -> dict[str, torch.Tensor]:
        batch = {
            key: torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
            for key, shape in shapes.items()
        }
        batch["label"] = torch.randint(0, num_classes, shapes["frames"][:1], generator=generator)
        return batch

    distinct = [synthetic_batch() for _ in range(min(full_batches, 8))]
    if pin:
        distinct = [{k: v.pin_memory() for k, v in b.items()} for b in distinct]
    synthetic = list(itertools.islice(itertools.cycle(distinct), full_batches))
    step = InProcessTrainer(cfg, num_classes, device)
    out["step"] = measure(lambda: step.epoch(synthetic), min_seconds)

    both = InProcessTrainer(cfg, num_classes, device)
    out["both"] = measure(lambda: both.epoch(stream()), min_seconds)
    out["shape"] = shapes["frames"]
    return out


def scaling_meaning(cpus: int, cpus_per_worker: float, use_gpu: bool) -> str:
    """What the 2-vs-1-worker ratio measures on a machine of ``cpus`` cores, in words."""
    threads = max(1, int(cpus_per_worker))
    # Each CPU worker steps on its torch threads, and Ray Data's read tasks need cores too.
    needed = 2 * (threads + 1)
    if use_gpu or cpus >= needed:
        return (
            f"MEANING: {cpus} cores hold 2 workers' steps and their reading; the ratio "
            "measures how training scales (2.00 = linear)"
        )
    return (
        f"MEANING: on this {cpus}-core machine the 2 workers' steps ({threads} torch "
        f"thread(s) each) and Ray Data's read tasks share the same {cpus} cores: the ratio "
        "measures oversubscription, NOT how training scales; that shows only with about "
        f"{needed} free cores (a step thread and a reading core per worker) or 2 GPUs "
        "(--use-gpu)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bu.add_dataset_args(parser, videos=48, frames=160)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config")
    parser.add_argument("--model", default="", help="model family (at its declared clip)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per scaling run")
    parser.add_argument(
        "--batch", type=int, default=0, help="batch per worker, 2-worker run (0 = config's)"
    )
    parser.add_argument(
        "--same",
        choices=["global", "per-worker"],
        default="global",
        help="what the 1- and 2-worker runs share: the global batch or the per-worker one",
    )
    parser.add_argument("--cpus-per-worker", type=float, default=0.5, help="per Ray Train worker")
    parser.add_argument(
        "--min-seconds", type=float, default=8.0, help="timed seconds per loader-bound side"
    )
    parser.add_argument("--use-gpu", action="store_true", help="train on CUDA (bf16)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 workers runs")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader-bound check")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.frames = min(args.videos, 16), 80
        args.epochs, args.min_seconds = 2, 3.0
    cpus = bu.cpu_count(args.cpus)
    t_start = time.perf_counter()

    print(f"bench/train: {bu.load()} (before)")
    with bu.workdir(args.workdir) as work:
        root = (
            work / f"videos_{bu.dataset_tag(args.videos, args.frames, args.video_fps, args.size)}"
        )
        t_gen, paths = bu.timed(
            lambda: bu.make_videos(
                root, videos=args.videos, frames=args.frames, fps=args.video_fps, size=args.size
            )
        )
        cfg = make_config(args, root, work)
        t_init = bu.start_ray(cpus)
        data = Path(cfg.train.data)
        if (data / "dataset.yaml").exists():
            ingested = "reused"
        else:
            t_ingest, _ = bu.timed(lambda: run_ingest(cfg, log=lambda _: None))
            ingested = f"ingested in {t_ingest:.1f} s"
        counts = split_windows(cfg.train.data)
        ingest, clip, train = cfg.ingest, cfg.clip, cfg.train
        width, height = args.size
        print(
            f"dataset: {len(paths)} videos x {args.frames} frames at {args.video_fps:g} fps, "
            f"{width}x{height} (generated in {t_gen:.1f} s); stored at {ingest.fps:g} fps, "
            f"short side {ingest.short_side}, windows of {ingest.window_frames} at stride "
            f"{ingest.window_stride}, frames {ingest.frames_codec}, flow {cfg.flow.backend} "
            f"({ingested}); windows per split {counts}"
        )
        print(
            f"model: {cfg.model.name} (config {args.config.name}, width {cfg.model.width}); "
            f"clip T={clip.T} stride {clip.stride} crop {clip.crop}, flow L={cfg.flow.L}; "
            f"{'cuda, ' + train.precision if train.use_gpu else 'cpu, ' + train.precision}"
        )
        print(
            f"ray: local, {cpus} CPUs (ray.init {t_init:.1f} s, not timed); "
            f"{train.cpus_per_worker:g} CPUs and {max(1, int(train.cpus_per_worker))} torch "
            f"thread(s) per training worker"
        )

        runs = None if args.no_scaling else scaling(cfg, args)
        if runs:
            rows = [
                [
                    f"{n} worker{'s' if n > 1 else ''}",
                    r["batch"],
                    r["batch"] * n,
                    steps_per_epoch(
                        replace(cfg, train=replace(train, workers=n, batch_size=r["batch"])),
                        counts[SPLIT],
                    ),
                    r["clips_per_epoch"],
                    " ".join(f"{v:.0f}" for v in r["epochs"]),
                    r["epoch_s"],
                    r["rate"],
                    r["fit_s"],
                ]
                for n, r in runs.items()
            ]
            print()
            print(
                bu.table(
                    [
                        "run_training",
                        "batch/worker",
                        "global batch",
                        "steps/epoch",
                        "clips/epoch",
                        "clips/s by epoch",
                        "s/epoch",
                        "clips/s",
                        "fit s",
                    ],
                    rows,
                    title=f"scaling: {args.epochs} epochs each, same {args.same} batch; clips/s "
                    f"= MLflow {tracking.CLIPS_PER_SECOND}, "
                    + (
                        "epoch 1 is warm-up and not counted"
                        if args.epochs > 1
                        else "one epoch (warm-up included)"
                    )
                    + "; fit s includes Ray Train start-up and validation",
                )
            )

        bound = None if args.no_loader else loader_bound(cfg, args.min_seconds)
        if bound:
            shape = "x".join(map(str, bound.pop("shape")))
            labels = {
                "loader": "(a) loader alone: DataConfig split, the loop's torch batches",
                "step": "(b) step alone: train_epoch on synthetic batches",
                "both": "(c) both: train_epoch reading the loader",
            }
            print()
            print(
                bu.table(
                    ["in this process, one trainer", "median clips/s", "by epoch", "clips/epoch"],
                    [
                        [labels[k], rate, " ".join(f"{r:.0f}" for r in rates), per_epoch]
                        for k in labels
                        for rate, rates, per_epoch in [bound[k]]
                    ],
                    title=f"loader-bound: batches of uint8 frames {shape} (B,T,H,W,C), "
                    f"{torch.get_num_threads()} torch thread(s); per side a warm-up epoch, "
                    f"then >= 3 epochs and >= {args.min_seconds:g} s, the median counts",
                )
            )

        print()
        print(f"bench/train: {bu.load()} (after); total {time.perf_counter() - t_start:.0f} s")
        if runs:
            one, two = runs[1]["rate"], runs[2]["rate"]
            print(
                f"ratio clips/s 2 workers / 1 worker = {two / one:.2f} (1 worker {one:.1f} "
                f"clips/s, 2 workers {two:.1f} clips/s; same {args.same} batch; "
                f"{train.cpus_per_worker:g} CPUs per worker on {cpus} CPUs; 2.00 = linear)"
            )
            print(scaling_meaning(cpus, train.cpus_per_worker, train.use_gpu))
        if bound:
            a, b, c = (bound[k][0] for k in ("loader", "step", "both"))
            slower = "loader" if a < b else "step"
            serial = a * b / (a + b) / min(a, b)
            print(
                f"ratio together/min(alone) = {c / min(a, b):.2f} (loader {a:.1f}, step {b:.1f}, "
                f"both {c:.1f} clips/s; no overlap at all would give {serial:.2f})"
            )
            print(
                f"  the {slower} is the slower side alone ({min(a, b):.1f} clips/s); 1.00 = it "
                f"alone sets the pace and the {'step' if slower == 'loader' else 'loader'} hides "
                f"behind it; {serial:.2f} = reading and stepping take turns; lower = they also "
                "compete for the same cores"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
