"""The training driver: ingest output -> Ray Train -> an MLflow run.

clips = task_of(cfg).dataset(cfg, split, ...)               # Ray Data
run_id = tracking.start_run(cfg)                             # params
TorchTrainer(train_loop_per_worker, datasets=clips).fit()    # metrics per epoch
log config + best checkpoint as artifacts

A worker that dies restarts the worker group from the last checkpoint, up to
``train.max_failures`` times (Ray Train's FailureConfig).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidray import storage, tracking
from vidray.config import Config
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.errors import VidrayError
from vidray.models.weights import check_weights_source
from vidray.train.checkpoints import check_resumable
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model, train_loop_per_worker
from vidray.train.tasks import task_of


def select_best(kept: Sequence[tuple[Any, dict[str, Any]]], metric: str) -> tuple[Any, dict]:
    """The best of the (checkpoint, metrics) pairs Ray kept: highest ``metric``, then
    lowest val loss, then the latest epoch.

    A small val set ties often (8 videos give accuracy in steps of 1/8); taking the
    first epoch to reach the top score picked a less trained model than a later
    epoch with the same accuracy and a lower loss.
    """
    if not kept:
        raise VidrayError("training reported no checkpoint")

    def worst_if_nan(value: float) -> float:
        return -math.inf if math.isnan(value) else value

    def rank(pair: tuple[Any, dict[str, Any]]) -> tuple[float, float, float]:
        metrics = pair[1]
        return (
            worst_if_nan(metrics.get(metric, -math.inf)),
            worst_if_nan(-metrics.get(tracking.VAL_LOSS, math.inf)),
            metrics.get("epoch", -1),
        )

    return max(kept, key=rank)


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    checkpoint: str  # the best by the task's metric (val video accuracy, val frame-mAP)
    last_checkpoint: str  # the last epoch's: what train.resume_from takes
    metrics: dict[str, Any]
    num_classes: int
    seconds: float
    metric: str = tracking.VAL_VIDEO_TOP1

    def report(self) -> str:
        video = self.metrics.get(tracking.VAL_VIDEO_TOP1)
        lines = [
            f"train: {self.seconds:.0f} s; best checkpoint (epoch {self.metrics.get('epoch')}) "
            f"{self.checkpoint}",
        ]
        if self.metric != tracking.VAL_VIDEO_TOP1 and self.metric in self.metrics:
            lines.append(f"train: {self.metric} {self.metrics[self.metric]:.3f}")
        if video is not None:
            lines.append(
                f"train: val video accuracy {video:.3f} "
                f"(clip {self.metrics.get(tracking.VAL_CLIP_TOP1, 0):.3f}; "
                f"chance {1 / self.num_classes:.3f})"
            )
        lines.append(f"train: MLflow run {self.run_id}: {self.ui_command()}")
        return "\n".join(lines)

    def ui_command(self) -> str:
        return tracking.ui_command(self.tracking_uri)


def check_data(cfg: Config, info: dict[str, Any]) -> None:
    """Errors a user can make that would otherwise surface inside a worker, an hour later."""
    storage = info["storage"]
    windows = storage["ingest.window_frames"]
    span = (cfg.clip.T - 1) * cfg.clip.stride + 1
    if cfg.clip.T < 1 or cfg.clip.stride < 1:
        raise VidrayError(
            f"clip.T and clip.stride must be >= 1, got {cfg.clip.T}, {cfg.clip.stride}"
        )
    if span > windows:
        raise VidrayError(
            f"clip.T={cfg.clip.T} at clip.stride={cfg.clip.stride} spans {span} frames, "
            f"but {cfg.train.data} stores windows of {windows}: lower clip.T or clip.stride"
        )
    short_side = storage["ingest.short_side"]
    if cfg.train.task == "detect":
        if info.get("layout") != "ava":
            raise VidrayError(
                f"train.task=detect needs keyframe rows, but {cfg.train.data} was ingested "
                f"with layout {info.get('layout')!r}: ingest with layout ava"
            )
    elif short_side and cfg.clip.crop > short_side:
        raise VidrayError(
            f"clip.crop={cfg.clip.crop} exceeds the stored short side {short_side}: lower clip.crop"
        )
    if cfg.flow.L and storage["flow.backend"] == "none":
        raise VidrayError(f"flow.L={cfg.flow.L} needs flow, but {cfg.train.data} has none")
    if cfg.flow.L > windows - 1:
        raise VidrayError(f"flow.L={cfg.flow.L} exceeds the {windows - 1} flow fields per window")
    if len(info["classes"]) < 2:
        raise VidrayError(f"{cfg.train.data} has {len(info['classes'])} classes; training needs 2+")
    if cfg.optim.lr < 0:
        raise VidrayError(f"optim.lr must be >= 0, got {cfg.optim.lr}")
    if cfg.train.grad_accum < 1:
        raise VidrayError(f"train.grad_accum must be >= 1, got {cfg.train.grad_accum}")
    model = check_model(cfg, num_classes=len(info["classes"]))
    if cfg.train.resume_from:
        check_resumable(cfg.train.resume_from, model=model, classes=info["classes"])


def check_model(cfg: Config, *, num_classes: int) -> nn.Module:
    """Build the model and run one clip through it, on the meta device (shapes only, so
    even the largest families cost nothing): an unknown model or argument, or a clip
    the model cannot take (too few frames for its temporal kernels), fails here, before
    any worker starts, instead of in the first training step."""
    if cfg.model.pretrained:
        check_weights_source(cfg.model.pretrained)
    shapes_only = replace(cfg, model=replace(cfg.model, pretrained=""))
    with torch.device("meta"):
        model = build_model(shapes_only, num_classes=num_classes)
        try:
            logits = model(*task_of(cfg).example(cfg, device="meta"))
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VidrayError(
                f"model {cfg.model.name!r} cannot take clips of T={cfg.clip.T}, "
                f"crop={cfg.clip.crop}, flow.L={cfg.flow.L}: {reason}"
            ) from None
    if tuple(logits.shape) != (1, num_classes):
        raise VidrayError(
            f"model {cfg.model.name!r} gives outputs of shape {tuple(logits.shape)} for one "
            f"clip, not (1, {num_classes})"
        )
    return model


def steps_per_epoch(cfg: Config, train_windows: int) -> int:
    """Optimiser steps per epoch on each rank: one clip per window, split evenly."""
    batches = math.ceil(math.ceil(train_windows / cfg.train.num_workers) / cfg.train.batch_size)
    return max(1, math.ceil(batches / cfg.train.grad_accum))


def ray_resources() -> dict[str, float]:
    """The cluster's CPUs and GPUs, logged so runs on different clusters compare fairly."""
    import ray

    resources = ray.cluster_resources()
    return {"ray.cpus": resources.get("CPU", 0), "ray.gpus": resources.get("GPU", 0)}


def split_counts(data: str, classes: list[str], labeled: tuple[str, ...]) -> dict[str, int]:
    """Windows per split, from the manifest (no shard is opened), after checking
    that every video's label is one of the dataset's ``classes`` and that the
    ``labeled`` splits (those trained or validated on) have no unlabeled video."""
    counts: dict[str, int] = {}
    for row in read_manifest(data):
        if row["status"] != "ok":
            continue
        label = row["label"]
        if label < 0 and row["split"] in labeled:
            raise VidrayError(
                f"{data}: video {row['video_id']} in split {row['split']!r} has no label; "
                "training and validation need labeled videos"
            )
        if label >= len(classes) or (label >= 0 and row["label_name"] != classes[label]):
            raise VidrayError(
                f"{data}: video {row['video_id']} has label {label} ({row['label_name']!r}), "
                f"but dataset.yaml lists {len(classes)} classes: the manifest and dataset.yaml "
                "disagree, re-ingest into a new output"
            )
        counts[row["split"]] = counts.get(row["split"], 0) + row["n_windows"]
    return counts


def run_training(
    cfg: Config,
    *,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[Any] = (),
    debug: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.train.data``; needs a running Ray.

    ``tags`` go on the MLflow run (a sweep nests its trials with
    ``mlflow.parentRunId``); ``callbacks`` are Ray Train callbacks (a Tune trial
    passes the one that reports each epoch to Tune). ``debug`` is for tests
    only (see `vidray.train.loop.DebugHooks`).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not cfg.train.data:
        raise VidrayError("train.data is not set: pass --data DIR (an ingest output)")
    # Absolute, as Ray workers run in other directories.
    cfg = resolve_inputs(
        replace(cfg, train=replace(cfg.train, data=storage.resolve(cfg.train.data)))
    )
    info = read_dataset_info(cfg.train.data)
    check_data(cfg, info)
    storage_path = storage.resolve(cfg.train.storage_path)
    task = task_of(cfg)
    # Detection rows carry their labels per box; only classification labels videos.
    labeled = ("train", cfg.train.val_split) if task.name == "classify" else ()
    counts = split_counts(cfg.train.data, info["classes"], labeled)
    if not counts.get("train"):
        raise VidrayError(f"{cfg.train.data} has no windows in split 'train' (splits: {counts})")
    if not counts.get(cfg.train.val_split):
        raise VidrayError(
            f"{cfg.train.data} has no windows in split '{cfg.train.val_split}' "
            f"(splits: {counts}): set train.val_split"
        )
    classes = info["classes"]
    uri = tracking.tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)
    run_name = cfg.train.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"vidray.task": "train", **(tags or {})}
    resume = storage.resolve(cfg.train.resume_from) if cfg.train.resume_from else ""
    if resume:
        # A resumed run is a new MLflow run (its params, e.g. train.epochs, may differ)
        # whose metrics continue at the next epoch; the tag links it to the first.
        tags["vidray.resumed_from"] = resume
    run_id = tracking.start_run(cfg, uri=uri, run_name=run_name, tags=tags)
    per_epoch = steps_per_epoch(cfg, counts["train"])
    tracking.log_params(
        uri,
        run_id,
        {
            "data.videos": info["videos"],
            "data.windows": info["windows"],
            "data.classes": len(classes),
            **{f"data.windows_{split}": n for split, n in counts.items()},
            "data.steps_per_epoch": per_epoch,
            **ray_resources(),
        },
    )
    t0 = time.monotonic()
    status = "FAILED"
    try:
        datasets = {
            "train": task.dataset(cfg, "train", train=True),
            "val": task.dataset(cfg, cfg.train.val_split, train=False),
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": cfg.to_dict(),
                "classes": classes,
                "dataset": info,
                "tracking_uri": uri,
                "run_id": run_id,
                "steps_per_epoch": per_epoch,
                # Ray Train V2 refuses TorchTrainer(resume_from_checkpoint=...)
                # (deprecated, ray#49454): the loop loads it on a first start.
                "resume_from": resume,
                "debug": debug,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.train.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage_path,
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                callbacks=list(callbacks),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=2,
                    checkpoint_score_attribute=task.metric,
                    checkpoint_score_order="max",
                ),
            ),
            datasets=datasets,
            # Only the training set is split; rank 0 reads all of val (video accuracy and
            # frame-mAP need every clip of the split).
            dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        result = trainer.fit()
        best, best_metrics = select_best(result.best_checkpoints, task.metric)
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / "config.yaml"
            config_file.write_text(cfg.to_yaml())
            tracking.log_artifact(uri, run_id, config_file)
            for table in task.tables(best_metrics, Path(tmp)):
                tracking.log_artifact(uri, run_id, table)
        with best.as_directory() as directory:
            tracking.log_artifact(uri, run_id, directory, "checkpoint")
        status = "FINISHED"
        return TrainResult(
            run_id=run_id,
            tracking_uri=uri,
            checkpoint=best.path,
            last_checkpoint=result.checkpoint.path,
            metrics=best_metrics,
            num_classes=len(classes),
            seconds=time.monotonic() - t0,
            metric=task.metric,
        )
    finally:
        tracking.end_run(uri, run_id, status=status)
