"""What differs between training tasks; the loop and the driver are shared.

A task is registered by its package, as a model family is: ``classify`` here
(a clip -> class logits, cross-entropy; validation: clip and video accuracy,
`vidray.train.metrics`; checkpoints ranked by val video top-1), ``detect`` by
`vidray.detect` when it is imported. train/ imports no task package: the
driver hands its task to the workers, which import its package to unpickle it.

    task = task_of(cfg)
    model = task.build(cfg, num_classes)
    ds = task.dataset(cfg, split, train=True, clock=clock)    # driver, Ray Data
    for batch in task.batches(shard, cfg, train=True, pin=False, seed=s):   # worker
        loss, hits, n = task.loss(model, batch, cfg, device)
    metrics = task.validate(model, val_shard, cfg, device, classes)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidray import tracking
from vidray.config import Config
from vidray.device import Normalization, autocast, to_device
from vidray.errors import VidrayError
from vidray.models import InputSpec, build
from vidray.models.registry import arguments
from vidray.models.summary import example_input
from vidray.train.inputs import model_kwargs
from vidray.train.metrics import classification_metrics


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Any,
    device: torch.device,
    *,
    normalization: Normalization,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Logits, labels and video keys of every clip in ``batches``, and video ids where
    the batches carry them: the one inference loop of validation and evaluation.

    Batches may hold torch tensors (Ray Train's shards) or numpy arrays (Ray Data's
    batches, the local reader). The model runs as in training: clips normalised as
    its training's were, ``precision``, and on channels-last clips
    (`vidray.device.to_device`; see `for_inference`).
    """
    model.eval()
    found: dict[str, list[np.ndarray]] = defaultdict(list)
    for batch in batches:
        batch = dict(batch)
        if "video_id" in batch:  # strings: no tensor holds them
            found["video_ids"].append(np.asarray(batch.pop("video_id")))
        # Arrays read from Arrow are read-only, which torch warns of once per process.
        tensors = {
            k: v
            if isinstance(v, torch.Tensor)
            else torch.from_numpy(np.require(v, requirements="W"))
            for k, v in batch.items()
        }
        with autocast(device, precision):
            logits = model(to_device(tensors, device, normalization))
        found["logits"].append(logits.float().cpu().numpy())
        found["labels"].append(np.asarray(batch["label"]))
        found["keys"].append(np.asarray(batch["video_key"]))
    if not found:
        return {"logits": np.zeros((0, 0)), "labels": np.zeros(0, np.int64), "keys": np.zeros(0)}
    return {name: np.concatenate(parts) for name, parts in found.items()}


def shard_batches(
    shard: Any, cfg: Config, *, train: bool, pin: bool, seed: int | None, **options: Any
) -> Any:
    """A Ray Train shard's torch batches of ``train.batch_size``; in training shuffled
    in a local buffer of ``train.shuffle_buffer`` (by ``seed`` if given). ``options``
    go to `iter_torch_batches` (a task's ``collate_fn``)."""
    return shard.iter_torch_batches(
        batch_size=cfg.train.batch_size,
        local_shuffle_buffer_size=(cfg.train.shuffle_buffer or None) if train else None,
        local_shuffle_seed=seed if train else None,
        pin_memory=pin,
        **options,
    )


@dataclass(frozen=True)
class Classify:
    name: str = "classify"
    metric: str = tracking.VAL_VIDEO_TOP1  # checkpoints are ranked by it
    hits: str = tracking.TRAIN_CLIP_TOP1  # the share of training items predicted right

    def build(self, cfg: Config, num_classes: int) -> nn.Module:
        """The configured family, built for the clip the loader will give it."""
        kwargs = model_kwargs(cfg.model)
        # Families whose layers depend on the clip (early fusion's 3T-channel conv, the
        # temporal stream's 2L channels) take its length under the InputSpec's names.
        takes = arguments(cfg.model.name)
        if "frames" in takes:
            kwargs["frames"] = cfg.clip.T
        if "flow" in takes:
            kwargs["flow"] = cfg.flow.L
        return build(cfg.model.name, num_classes=num_classes, **kwargs)

    def example(self, cfg: Config, device: str) -> tuple[Any, ...]:
        """The arguments of one forward pass on a clip of the configured shape."""
        spec = InputSpec(frames=cfg.clip.T, crop=cfg.clip.crop, flow=cfg.flow.L)
        return (example_input(spec, device=device),)

    def dataset(self, cfg: Config, split: str, *, train: bool, clock: Any = None) -> Any:
        """The clips of ``split``; training draws them from ``train.seed`` and the epoch
        ``clock`` (an `EpochClock` actor) says."""
        from vidray.data.reading import read_clips

        return read_clips(
            cfg.train.data,
            split=split,
            clip=cfg.clip,
            flow_L=cfg.flow.L,
            train=train,
            seed=cfg.train.seed,
            clock=clock,
        )

    def batches(
        self, shard: Any, cfg: Config, *, train: bool, pin: bool, seed: int | None = None
    ) -> Any:
        """Torch batches of a shard; in training, shuffled locally (by ``seed`` if given)."""
        return shard_batches(shard, cfg, train=train, pin=pin, seed=seed, device="cpu")

    def loss(
        self, model: nn.Module, batch: dict[str, Any], cfg: Config, device: torch.device
    ) -> tuple[torch.Tensor, int, int]:
        """(mean loss, items predicted right, items) of one batch."""
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, cfg.train.precision):
            logits = model(to_device(batch, device, Normalization.of(cfg.clip)))
            loss = F.cross_entropy(
                logits.float(), labels, label_smoothing=cfg.train.label_smoothing
            )
        return loss, int((logits.argmax(1) == labels).sum()), len(labels)

    def validate(
        self, model: nn.Module, shard: Any, cfg: Config, device: torch.device, classes: list
    ) -> dict[str, float]:
        out = predict(
            model,
            self.batches(shard, cfg, train=False, pin=device.type == "cuda"),
            device,
            normalization=Normalization.of(cfg.clip),
            precision=cfg.train.precision,
        )
        return classification_metrics(out["logits"], out["labels"], out["keys"], prefix="val")

    def tables(self, metrics: dict[str, Any], directory: Path) -> list[Path]:
        """Extra artifacts of the best epoch (none: `vidray evaluate` writes the reports)."""
        return []


class Task(Protocol):
    """What the loop and the driver ask of a task (`Classify` is the reference)."""

    name: str
    metric: str  # checkpoints are ranked by it
    hits: str  # the share of training items predicted right

    def build(self, cfg: Config, num_classes: int) -> nn.Module: ...
    def example(self, cfg: Config, device: str) -> tuple[Any, ...]: ...
    def dataset(self, cfg: Config, split: str, *, train: bool, clock: Any = None) -> Any: ...
    def batches(
        self, shard: Any, cfg: Config, *, train: bool, pin: bool, seed: int | None = None
    ) -> Any: ...
    def loss(
        self, model: nn.Module, batch: dict[str, Any], cfg: Config, device: torch.device
    ) -> tuple[torch.Tensor, int, int]: ...
    def validate(
        self, model: nn.Module, shard: Any, cfg: Config, device: torch.device, classes: list
    ) -> dict[str, float]: ...
    def tables(self, metrics: dict[str, Any], directory: Path) -> list[Path]: ...


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` the one ``train.task=<task.name>`` trains."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    _TASKS[task.name] = task
    return task


def task_of(cfg: Config) -> Task:
    if cfg.train.task not in _TASKS:
        raise VidrayError(
            f"train.task={cfg.train.task} is not registered here (registered: "
            f"{', '.join(sorted(_TASKS))}): import vidray.{cfg.train.task} first"
        )
    return _TASKS[cfg.train.task]


CLASSIFY = register_task(Classify())
