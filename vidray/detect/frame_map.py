"""Frame-mAP at IoU 0.5: the AVA evaluation protocol, with no external eval package.

What it computes, as AVA's ``get_ava_performance.py`` does (with the TF Object
Detection API's ``PascalDetectionEvaluator`` underneath):

1. Keyframes listed in `excluded` are ignored entirely: their ground truth and
   their detections. A detection on any other keyframe without ground truth of
   its class is a false positive.
2. Only classes of the evaluation label map count: ground truth and detections
   of other action ids are ignored. A class is evaluated when it has ground truth.
3. Per class, every detection of that class is matched within its keyframe in
   descending score order. With ``matching="voc"`` (the AVA/PASCAL rule) a
   detection is a true positive when its highest-IoU ground-truth box of that
   class has IoU >= the threshold and is not yet matched; a detection whose
   best box is already matched is a false positive (a duplicate), even if a
   second-best box overlaps it enough. With ``matching="greedy"`` it takes the
   highest-IoU box among those not yet matched instead.
4. AP per class is PASCAL VOC 2010+ average precision: detections of all
   keyframes ranked by score (ties keep input order), precision and recall at
   every rank, and the area under the precision envelope (precision made
   monotonically non-increasing from the right) over recall in [0, 1]. A class
   with ground truth and no detection has AP 0.
5. frame-mAP is the mean AP over the evaluated classes.

The official script also keeps only the 50 highest-scoring detections per
keyframe; pass ``max_detections_per_keyframe=50`` to do the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vidray.data.ava_files import Box, Detection, KeyframeKey, LabeledBox, LabelMap, iou_matrix
from vidray.errors import VidrayError

__all__ = ["MATCHING", "FrameMAP", "average_precision", "frame_map"]

MATCHING = ("voc", "greedy")


@dataclass(frozen=True)
class FrameMAP:
    """Frame-mAP and its parts; every dict is keyed by action id, ascending."""

    mean_ap: float
    per_class: dict[int, float]  # AP of each evaluated class (those with ground truth)
    num_ground_truth: dict[int, int]  # ground-truth boxes of each evaluated class
    num_detections: dict[int, int]  # detections of each evaluated class that were ranked
    iou_threshold: float = 0.5

    def by_name(self, label_map: LabelMap) -> dict[str, float]:
        """Per-class AP keyed by class name (for logging)."""
        return {label_map.name(i): ap for i, ap in self.per_class.items()}


def average_precision(scores: Sequence[float], is_tp: Sequence[bool], num_gt: int) -> float:
    """PASCAL VOC 2010+ AP of ranked detections (all-point interpolation).

    `scores` and `is_tp` describe every detection of one class; `num_gt` is the
    number of ground-truth boxes of that class (> 0). Ties keep input order.
    """
    if num_gt <= 0:
        raise ValueError(f"num_gt must be > 0, got {num_gt}")
    scores = np.asarray(scores, float)
    tp = np.asarray(is_tp, bool)
    if scores.shape != tp.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and is_tp {tp.shape} must be equal 1-D shapes")
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(tp[order])
    if true_pos.size and true_pos[-1] > num_gt:
        raise ValueError(f"{true_pos[-1]} true positives for {num_gt} ground-truth boxes")
    precision = true_pos / np.arange(1, len(true_pos) + 1)
    recall = true_pos / num_gt
    # Pad so the envelope starts at recall 0 and ends at recall 1 with precision 0.
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def frame_map(
    ground_truth: Mapping[KeyframeKey, Sequence[LabeledBox]],
    detections: Mapping[KeyframeKey, Sequence[Detection]],
    *,
    label_map: LabelMap | Iterable[int] | None = None,
    excluded: Iterable[KeyframeKey] = (),
    iou_threshold: float = 0.5,
    matching: str = "voc",
    max_detections_per_keyframe: int | None = None,
) -> FrameMAP:
    """Frame-mAP of `detections` against `ground_truth` (both keyed by keyframe).

    `label_map` (a `LabelMap` or action ids) picks the classes that count; None
    means every class that has ground truth. See the module docstring for the
    protocol. Raises `VidrayError` when no class has ground truth.
    """
    _check_options(iou_threshold, matching, max_detections_per_keyframe)
    skip = frozenset(excluded)
    allowed = (
        None
        if label_map is None
        else frozenset(label_map.ids if isinstance(label_map, LabelMap) else label_map)
    )

    num_gt: dict[int, int] = {}
    ranked: dict[int, tuple[list[float], list[bool]]] = {}
    for key in sorted(set(ground_truth) | set(detections)):
        if key in skip:
            continue
        gt_boxes = _gt_by_class(ground_truth.get(key, ()), allowed)
        for action_id, boxes in gt_boxes.items():
            num_gt[action_id] = num_gt.get(action_id, 0) + len(boxes)
        frame_dets = _strongest(detections.get(key, ()), max_detections_per_keyframe)
        for action_id, dets in _dets_by_class(frame_dets, allowed).items():
            scores, hits = ranked.setdefault(action_id, ([], []))
            scores.extend(d.score for d in dets)
            hits.extend(_match(dets, gt_boxes.get(action_id, []), iou_threshold, matching))

    if not num_gt:
        raise VidrayError(
            "frame-mAP: no ground-truth box of an evaluated class outside the excluded "
            "keyframes: check the annotations and the evaluation label map"
        )
    per_class, counts = {}, {}
    for action_id in sorted(num_gt):
        scores, hits = ranked.get(action_id, ([], []))
        per_class[action_id] = average_precision(scores, hits, num_gt[action_id])
        counts[action_id] = len(scores)
    return FrameMAP(
        mean_ap=float(np.mean(list(per_class.values()))),
        per_class=per_class,
        num_ground_truth=dict(sorted(num_gt.items())),
        num_detections=counts,
        iou_threshold=iou_threshold,
    )


def _check_options(iou_threshold: float, matching: str, max_detections: int | None) -> None:
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if matching not in MATCHING:
        raise ValueError(f"matching must be one of {', '.join(MATCHING)}, got {matching!r}")
    if max_detections is not None and max_detections < 1:
        raise ValueError(f"max_detections_per_keyframe must be >= 1, got {max_detections}")


def _strongest(detections: Sequence[Detection], limit: int | None) -> list[Detection]:
    """The ``limit`` highest-scoring detections of a keyframe (all if None), in input
    order."""
    detections = list(detections)
    if limit is None:
        return detections
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
    return [detections[i] for i in sorted(order[:limit])]


def _gt_by_class(
    people: Iterable[LabeledBox], allowed: frozenset[int] | None
) -> dict[int, list[Box]]:
    boxes: dict[int, list[Box]] = {}
    for person in people:
        for action_id in person.action_ids:
            if allowed is None or action_id in allowed:
                boxes.setdefault(action_id, []).append(person.box)
    return boxes


def _dets_by_class(
    dets: Iterable[Detection], allowed: frozenset[int] | None
) -> dict[int, list[Detection]]:
    grouped: dict[int, list[Detection]] = {}
    for det in dets:
        if allowed is None or det.action_id in allowed:
            grouped.setdefault(det.action_id, []).append(det)
    return grouped


def _match(
    dets: list[Detection], gt_boxes: list[Box], iou_threshold: float, matching: str
) -> list[bool]:
    """True positive flags of one keyframe's detections of one class, in input order."""
    hits = [False] * len(dets)
    if not gt_boxes:
        return hits
    order = sorted(range(len(dets)), key=lambda i: -dets[i].score)  # stable: ties keep order
    iou = iou_matrix(np.asarray([d.box for d in dets], float), np.asarray(gt_boxes, float))
    matched = np.zeros(len(gt_boxes), bool)
    for i in order:
        overlaps = iou[i] if matching == "voc" else np.where(matched, -1.0, iou[i])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold and not matched[best]:
            matched[best] = hits[i] = True
    return hits
