"""The ``detect`` training task (AVA-style, keyframe rows of layout ava), registered
with `vidray.train.tasks` when `vidray.detect` is imported.

A clip and the boxes on its keyframe -> per-box multi-label action logits,
binary cross-entropy; validation: frame-mAP at IoU 0.5 of the boxes
`detection.eval_boxes` names (the AVA protocol, `vidray.detect.frame_map`);
checkpoints ranked by val frame-mAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidray import tracking
from vidray.config import Config
from vidray.detect.clips import collate, read_keyframes
from vidray.detect.evaluate import AP_TABLE_FILE, detection_metrics, write_ap_table
from vidray.device import Normalization, autocast, frames_to_input
from vidray.models.detector import build_detector, detector_backbone
from vidray.train.inputs import model_kwargs
from vidray.train.tasks import register_task, shard_batches


@dataclass(frozen=True)
class Detect:
    name: str = "detect"
    metric: str = tracking.VAL_FRAME_MAP
    hits: str = tracking.TRAIN_BOX_TOP1  # boxes whose top-scoring action is one of theirs

    def build(self, cfg: Config, num_classes: int) -> nn.Module:
        kwargs = model_kwargs(cfg.model)
        # model.dropout is the head's; the rest (model.pretrained as for a classifier)
        # goes to the backbone's family. A classification checkpoint of the backbone
        # (e.g. Kinetics) is detection.backbone_checkpoint.
        head = {"dropout": kwargs.pop("dropout")} if "dropout" in kwargs else {}
        if "res5_dilation" in detector_backbone(cfg.model.name).dense:
            kwargs["res5_dilation"] = cfg.detection.res5_dilation
        return build_detector(
            cfg.model.name,
            num_classes=num_classes,
            pretrained_backbone=cfg.detection.backbone_checkpoint,
            roi_size=cfg.detection.roi_size,
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
        return read_keyframes(cfg, split=split, train=train, clock=clock)

    def batches(
        self, shard: Any, cfg: Config, *, train: bool, pin: bool, seed: int | None = None
    ) -> Any:
        return shard_batches(shard, cfg, train=train, pin=pin, seed=seed, collate_fn=collate)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], cfg: Config, device: torch.device
    ) -> tuple[torch.Tensor, int, int]:
        targets = batch["targets"].to(device, non_blocking=True)
        clips = frames_to_input(
            batch["frames"].to(device, non_blocking=True), Normalization.of(cfg.clip)
        )
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
        return detection_metrics(
            model, self.batches(shard, cfg, train=False, pin=False), cfg, device, prefix="val"
        )

    def tables(self, metrics: dict[str, Any], directory: Path) -> list[Path]:
        """The best epoch's per-class AP table (``per_class_ap.csv``)."""
        return [write_ap_table(directory / AP_TABLE_FILE, metrics, prefix="val")]


DETECT = register_task(Detect())
