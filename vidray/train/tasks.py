"""What differs between training tasks; the loop and the driver are shared.

``classify``: a clip -> class logits, cross-entropy; validation: clip and
video accuracy (`vidray.train.metrics`); checkpoints ranked by val video top-1.

``detect`` (AVA-style, keyframe rows of layout ava): a clip and the boxes on
its keyframe -> per-box multi-label action logits, binary cross-entropy;
validation: frame-mAP at IoU 0.5 of the boxes `detect.eval_boxes` names (the
AVA protocol, `vidray.detect.frame_map`); checkpoints ranked by val frame-mAP.

    task = task_of(cfg)
    model = task.build(cfg, num_classes)
    ds = task.dataset(cfg, split, train=True, clock=clock)    # driver, Ray Data
    for batch in task.batches(shard, cfg, train=True, pin=False, seed=s):   # worker
        loss, hits, n = task.loss(model, batch, cfg, device)
    metrics = task.validate(model, val_shard, cfg, device, classes)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidray import tracking
from vidray.config import Config
from vidray.device import autocast, frames_to_input, to_device
from vidray.models import InputSpec, build
from vidray.models.registry import arguments
from vidray.models.summary import example_input
from vidray.train.inputs import model_kwargs
from vidray.train.metrics import classification_metrics


@torch.no_grad()
def predict(
    model: nn.Module, batches: Any, device: torch.device, *, precision: str = "fp32"
) -> dict[str, np.ndarray]:
    """Logits, labels and video keys of every clip in ``batches`` (torch batches)."""
    model.eval()
    logits, labels, keys = [], [], []
    for batch in batches:
        with autocast(device, precision):
            out = model(to_device(batch, device))
        logits.append(out.float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        keys.append(np.asarray(batch["video_key"]))
    if not logits:
        return {"logits": np.zeros((0, 0)), "labels": np.zeros(0, np.int64), "keys": np.zeros(0)}
    return {
        "logits": np.concatenate(logits),
        "labels": np.concatenate(labels),
        "keys": np.concatenate(keys),
    }


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
        from vidray.data.clips import read_clips

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
        return shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            local_shuffle_buffer_size=(cfg.train.shuffle_buffer or None) if train else None,
            local_shuffle_seed=seed if train else None,
            device="cpu",
            pin_memory=pin,
        )

    def loss(
        self, model: nn.Module, batch: dict[str, Any], cfg: Config, device: torch.device
    ) -> tuple[torch.Tensor, int, int]:
        """(mean loss, items predicted right, items) of one batch."""
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, cfg.train.precision):
            logits = model(to_device(batch, device))
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
            precision=cfg.train.precision,
        )
        return classification_metrics(out["logits"], out["labels"], out["keys"], prefix="val")

    def tables(self, metrics: dict[str, Any], directory: Path) -> list[Path]:
        """Extra artifacts of the best epoch (none: `vidray evaluate` writes the reports)."""
        return []


@dataclass(frozen=True)
class Detect:
    name: str = "detect"
    metric: str = tracking.VAL_FRAME_MAP
    hits: str = tracking.TRAIN_BOX_TOP1  # boxes whose top-scoring action is one of theirs

    def build(self, cfg: Config, num_classes: int) -> nn.Module:
        from vidray.models.detector import build_detector

        kwargs = model_kwargs(cfg.model)
        # model.pretrained is the backbone's classification checkpoint (e.g. Kinetics),
        # model.dropout the head's; the rest shapes the backbone.
        head = {"dropout": kwargs.pop("dropout")} if "dropout" in kwargs else {}
        return build_detector(
            cfg.model.name,
            num_classes=num_classes,
            pretrained_backbone=kwargs.pop("pretrained", ""),
            roi_size=cfg.detect.roi_size,
            **head,
            **kwargs,
        )

    def example(self, cfg: Config, device: str) -> tuple[Any, ...]:
        """A clip (at ``clip.crop`` square; detection reads whole frames of any size)
        and one box on it."""
        size = cfg.clip.crop
        clip = torch.zeros(1, 3, cfg.clip.T, size, size, device=device)
        box = torch.tensor([[0.0, 0.0, 0.0, size / 2, size / 2]], device=device)
        return clip, box

    def dataset(self, cfg: Config, split: str, *, train: bool, clock: Any = None) -> Any:
        from vidray.detect.clips import read_keyframes

        return read_keyframes(cfg, split=split, train=train, clock=clock)

    def batches(
        self, shard: Any, cfg: Config, *, train: bool, pin: bool, seed: int | None = None
    ) -> Any:
        from vidray.detect.clips import collate

        return shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            local_shuffle_buffer_size=(cfg.train.shuffle_buffer or None) if train else None,
            local_shuffle_seed=seed if train else None,
            collate_fn=collate,
            pin_memory=pin,
        )

    def loss(
        self, model: nn.Module, batch: dict[str, Any], cfg: Config, device: torch.device
    ) -> tuple[torch.Tensor, int, int]:
        targets = batch["targets"].to(device, non_blocking=True)
        clips = frames_to_input(batch["frames"].to(device, non_blocking=True))
        with autocast(device, cfg.train.precision):
            logits = model(clips, batch["boxes"].to(device, non_blocking=True))
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        if not len(targets):
            return loss, 0, 0
        top = logits.argmax(1)
        return loss, int(targets[torch.arange(len(top)), top].sum()), len(targets)

    def validate(
        self, model: nn.Module, shard: Any, cfg: Config, device: torch.device, classes: list
    ) -> dict[str, float]:
        from vidray.detect.evaluate import detection_metrics

        return detection_metrics(
            model, self.batches(shard, cfg, train=False, pin=False), cfg, device, prefix="val"
        )

    def tables(self, metrics: dict[str, Any], directory: Path) -> list[Path]:
        """The best epoch's per-class AP table (``per_class_ap.csv``)."""
        from vidray.detect.evaluate import write_ap_table

        return [write_ap_table(directory / "per_class_ap.csv", metrics, prefix="val")]


TASKS = {task.name: task for task in (Classify(), Detect())}


def task_of(cfg: Config) -> Classify | Detect:
    return TASKS[cfg.train.task]
