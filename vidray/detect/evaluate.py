"""Detection scores of a model on keyframe clips: frame-mAP and per-class AP.

Every box a clip carries (person proposals above ``detection.proposal_threshold``,
or the ground-truth boxes with ``detection.eval_boxes=truth``) gets one
detection per action class, scored by the sigmoid of its logit, and
`vidray.detect.frame_map` scores them against the keyframe's ground truth as
ActivityNet's AVA evaluator does (the 50 strongest per keyframe, IoU 0.5): the
same implementation as `vidray ava-map`. Every keyframe of the split counts, one
without boxes too. ``detection.eval_label_map`` (AVA: the 60-class list) picks
the classes averaged; by default every class with ground truth counts.

The ground truth is the ingested one, so it differs from ava-map's reading of the
CSV where ingest differs: a box's actions are a set (a repeated row counts once)
and rows ingest left out (a box outside [0, 1]) are not there.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidray import tracking
from vidray.config import Config
from vidray.data.ava_files import Box, Detection, LabeledBox, read_label_map
from vidray.data.manifest import read_dataset_info
from vidray.detect.clips import action_ids, collate, iter_keyframe_batches
from vidray.detect.frame_map import TopDetections, frame_map
from vidray.device import Normalization, autocast, for_inference, frames_to_input
from vidray.errors import VidrayError
from vidray.train.evaluate import Evaluated, register_evaluator

KeyframeKey = tuple[int, int]  # (video_key, keyframe second)
AP_TABLE_FILE = "per_class_ap.csv"


@torch.no_grad()
def collect(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    ids: tuple[int, ...],
    device: torch.device,
    found: TopDetections,
    *,
    normalization: Normalization,
    precision: str = "fp32",
) -> dict[KeyframeKey, list[LabeledBox]]:
    """The ground truth by keyframe, from collated batches (`collate`); the detections
    (every box, every class) go into `found`, which keeps what the evaluator keeps."""
    model.eval()
    truth: dict[KeyframeKey, list[LabeledBox]] = defaultdict(list)
    for batch in batches:
        keys = list(zip(batch["video_key"].tolist(), batch["keyframe_sec"].tolist(), strict=True))
        for key in keys:  # a keyframe without boxes still counts: it can only hold misses
            truth.setdefault(key, [])
        for box, target, owner in zip(
            batch["truth_boxes"].tolist(),
            batch["truth_targets"].tolist(),
            batch["truth_owner"].tolist(),
            strict=True,
        ):
            actions = tuple(ids[c] for c, on in enumerate(target) if on)
            if actions:
                truth[keys[owner]].append(LabeledBox(Box(*box), actions))
        if not len(batch["boxes"]):
            continue
        clips = frames_to_input(batch["frames"].to(device), normalization)
        with autocast(device, precision):
            logits = model(clips, batch["boxes"].to(device))
        scores = torch.sigmoid(logits.float()).cpu().tolist()
        for box, row, owner in zip(
            batch["normalised"].tolist(), scores, batch["owner"].tolist(), strict=True
        ):
            for action, score in zip(ids, row, strict=True):
                found.add(keys[owner], Detection(Box(*box), action, score))
    return dict(truth)


def detection_metrics(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    cfg: Config,
    device: torch.device,
    *,
    prefix: str,
) -> dict[str, float]:
    """``{prefix}/frame_map`` and ``{prefix}/ap/<class>`` of every evaluated class."""
    ids = action_ids(cfg.train.data)
    names = dict(zip(ids, read_dataset_info(cfg.train.data)["classes"], strict=True))
    evaluated = (
        read_label_map(cfg.detection.eval_label_map) if cfg.detection.eval_label_map else None
    )
    found = TopDetections(evaluated)
    truth = collect(
        model,
        batches,
        ids,
        device,
        found,
        normalization=Normalization.of(cfg.clip),
        precision=cfg.train.precision,
    )
    result = frame_map(truth, found, label_map=evaluated)
    per_class = {tracking.safe_name(names[a]): ap for a, ap in result.per_class.items()}
    return {
        tracking.split_metric(prefix, tracking.FRAME_MAP): result.mean_ap,
        **{
            tracking.split_metric(prefix, f"{tracking.AP}/{name}"): ap
            for name, ap in per_class.items()
        },
    }


def write_ap_table(path: Path, metrics: dict[str, Any], *, prefix: str) -> Path:
    """The per-class APs in ``metrics`` as a CSV (class, AP), best first, mAP last."""
    marker = tracking.split_metric(prefix, f"{tracking.AP}/")
    rows = sorted(
        ((k[len(marker) :], v) for k, v in metrics.items() if k.startswith(marker)),
        key=lambda item: -item[1],
    )
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "ap"])
        writer.writerows(rows)
        writer.writerow(
            ["mean (frame-mAP)", metrics.get(tracking.split_metric(prefix, tracking.FRAME_MAP))]
        )
    return path


def evaluate_keyframes(
    cfg: Config, model: nn.Module, trained: Config, classes: list[str], data: str, output: Path
) -> Evaluated:
    """``vidray evaluate`` on a detection checkpoint: one clip per keyframe of
    ``eval.split`` (in this process), scored as validation scores (`detection_metrics`);
    writes the per-class AP table."""
    split = cfg.eval.split
    if (cfg.eval.temporal_views, cfg.eval.spatial_views) != (1, 1) or cfg.eval.workers:
        raise VidrayError(
            "a detection checkpoint is evaluated on one clip per keyframe, in this process: "
            "leave eval.temporal_views, eval.spatial_views and eval.workers unset"
        )
    scored = replace(trained, train=replace(trained.train, data=data))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    videos: set[int] = set()
    clips = 0

    def counted(batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, torch.Tensor]]:
        nonlocal clips
        for batch in batches:
            clips += len(batch["video_key"])
            videos.update(batch["video_key"].tolist())
            yield collate(batch)

    prefix = f"eval/{split}"
    metrics = detection_metrics(
        for_inference(model, device),
        counted(iter_keyframe_batches(scored, split=split)),
        scored,
        device,
        prefix=prefix,
    )
    if not clips:
        raise VidrayError(f"{data} has no keyframes in split {split!r}")
    output.mkdir(parents=True, exist_ok=True)
    table = write_ap_table(output / AP_TABLE_FILE, metrics, prefix=prefix)
    mean_ap = metrics[tracking.split_metric(prefix, tracking.FRAME_MAP)]
    return Evaluated(
        clips=clips,
        videos=len(videos),
        views=1,
        metrics=metrics,
        written=[table],
        headline=f"frame-mAP {mean_ap:.3f} over {len(classes)} classes",
    )


register_evaluator("detect", evaluate_keyframes)
