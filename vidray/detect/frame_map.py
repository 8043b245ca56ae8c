"""Frame-mAP at IoU 0.5: ActivityNet's AVA evaluation protocol, with no external package.

One implementation of what ActivityNet's ``get_ava_performance.py`` (AVA v2.2,
the 2019 challenge's script as changed in April 2020) computes with the TF
Object Detection API's ``PascalDetectionEvaluator`` underneath. Training's
``val/frame_map`` (`vidray.detect.evaluate`, feeding a `TopDetections` as it
collects) and `vidray ava-map` (`frame_map_of_files`, a file's rows one at a time)
both call `frame_map`.

1. Only classes of the label map count: ground truth and detections of other
   action ids are dropped first. Without a label map every class counts.
2. The keyframes scored are those of the ground truth, less the `excluded` ones.
   A ground-truth keyframe may hold no box (the 2020 files list such keyframes
   as 2-column rows): a detection there is a false positive. Detections on any
   other keyframe are ignored. Every ground-truth row is an instance, a repeated
   row too.
3. Per keyframe, the 50 highest-scoring detections are kept, chosen as the
   official script does: a min-heap of ``(score, action_id, y1, x1, y2, x2)``
   fed in input order, a detection replacing the heap's smallest only when its
   score is strictly higher; then ordered by descending score, stably, from the
   heap's array order. Detections with an empty or inverted box (not
   ``y1 < y2 and x1 < x2``) are then removed; boxes outside [0, 1] stay.
4. Per keyframe and class, in that order, a detection is a true positive when
   the ground-truth box of its class it overlaps most (the first, on equal IoU)
   has IoU >= 0.5 and is not matched yet; otherwise it is a false positive (a
   duplicate of a matched box included, even where a second box overlaps enough).
5. Per class, the detections of all keyframes (keyframes in the detections'
   order) are ranked by ``np.argsort(scores)[::-1]``: among equal scores the
   later one comes first. AP is the TF API's VOC AP (``compute_average_precision``):
   precision made non-increasing from the right, summed over the recall steps.
   A class with ground truth and no detection has AP 0.
6. frame-mAP is the mean AP over the classes with ground truth.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidray.data.ava_files import (
    Detection,
    LabeledBox,
    LabelMap,
    iter_detections,
    read_excluded,
    read_ground_truth,
    read_label_map,
)
from vidray.errors import VidrayError

__all__ = [
    "IOU_THRESHOLD",
    "TOP_DETECTIONS_PER_KEYFRAME",
    "FrameMAP",
    "TopDetections",
    "average_precision",
    "frame_map",
    "frame_map_of_files",
]

IOU_THRESHOLD = 0.5
TOP_DETECTIONS_PER_KEYFRAME = 50

# (score, action_id, y1, x1, y2, x2): the official script's heap entry; the tuple
# order decides which of equal scores the cap keeps.
_Entry = tuple[float, int, float, float, float, float]


@dataclass(frozen=True)
class FrameMAP:
    """Frame-mAP and its parts; every dict is keyed by action id, ascending."""

    mean_ap: float
    per_class: dict[int, float]  # AP of each evaluated class (those with ground truth)
    num_ground_truth: dict[int, int]  # ground-truth instances of each evaluated class
    num_detections: dict[int, int]  # detections of each evaluated class that were ranked
    iou_threshold: float = IOU_THRESHOLD

    def by_name(self, label_map: LabelMap) -> dict[str, float]:
        """Per-class AP keyed by class name (for logging)."""
        return {label_map.name(i): ap for i, ap in self.per_class.items()}


class TopDetections:
    """Detections fed one at a time and held as the official script holds them: per
    keyframe (in the order of its first detection of an evaluated class), a heap of
    at most 50 detections of the label map's classes (every class if None). Memory
    stays bounded however many detections a split has; `frame_map` takes it in
    place of a mapping."""

    def __init__(self, label_map: LabelMap | Iterable[int] | None = None) -> None:
        self.allowed = None if label_map is None else frozenset(_ids(label_map))
        self.heaps: dict[Hashable, list[_Entry]] = {}

    def add(self, key: Hashable, detection: Detection) -> None:
        if self.allowed is None or detection.action_id in self.allowed:
            d = detection
            entry = (d.score, d.action_id, d.box.y1, d.box.x1, d.box.y2, d.box.x2)
            _push(self.heaps.setdefault(key, []), entry, TOP_DETECTIONS_PER_KEYFRAME)


def average_precision(scores: Sequence[float], is_tp: Sequence[bool], num_gt: int) -> float:
    """The TF Object Detection API's VOC AP of one class's detections.

    `scores` and `is_tp` describe every detection of the class, in the order the
    keyframes were scored; `num_gt` is the number of ground-truth instances (> 0).
    Ranked by ``np.argsort(scores)[::-1]``, as the official code does.
    """
    if num_gt <= 0:
        raise ValueError(f"num_gt must be > 0, got {num_gt}")
    scores = np.asarray(scores, float)
    tp = np.asarray(is_tp, bool)
    if scores.shape != tp.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and is_tp {tp.shape} must be equal 1-D shapes")
    true_pos = np.cumsum(tp[np.argsort(scores)[::-1]])
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
    ground_truth: Mapping[Hashable, Sequence[LabeledBox]],
    detections: TopDetections
    | Mapping[Hashable, Iterable[Detection]]
    | Iterable[tuple[Hashable, Detection]],
    *,
    label_map: LabelMap | Iterable[int] | None = None,
    excluded: Iterable[Hashable] = (),
) -> FrameMAP:
    """Frame-mAP of `detections` against `ground_truth`, both keyed by keyframe.

    Each action id of each `LabeledBox` is one ground-truth instance (repeats
    count). `detections` is a mapping from keyframe to detections, a stream of
    (keyframe, detection) pairs (a file's rows: only the top 50 of each keyframe
    are held) or a `TopDetections` built with the same label map; its order decides
    ties as in the official script. `label_map` (a `LabelMap` or action ids) picks
    the classes that count; None means every class. See the module docstring for
    the protocol. Raises `VidrayError` when no class has ground truth.
    """
    top = _top_detections(detections, label_map)
    allowed = top.allowed
    skip = frozenset(excluded)
    truth = {
        key: _by_class(_descending(_heap(_truth_entries(people, allowed))))
        for key, people in ground_truth.items()
        if key not in skip
    }
    num_gt = _instances(truth)
    scores: dict[int, list[np.ndarray]] = {}
    hits: dict[int, list[np.ndarray]] = {}
    for key, heap in top.heaps.items():
        if key not in truth:
            continue
        for action_id, boxes in _by_class(_descending(heap), drop_empty=True).items():
            scores.setdefault(action_id, []).append(np.asarray([e[0] for e in boxes], float))
            matched = _match(_yxyx(boxes), _yxyx(truth[key].get(action_id, [])))
            hits.setdefault(action_id, []).append(matched)
    per_class = {
        a: average_precision(_joined(scores.get(a)), _joined(hits.get(a)), num_gt[a])
        for a in sorted(num_gt)
    }
    return FrameMAP(
        mean_ap=float(np.mean(list(per_class.values()))),
        per_class=per_class,
        num_ground_truth=dict(sorted(num_gt.items())),
        num_detections={a: len(_joined(scores.get(a))) for a in per_class},
    )


def frame_map_of_files(
    label_map: str | Path,
    ground_truth: str | Path,
    detections: str | Path,
    excluded: str | Path | None = None,
) -> tuple[FrameMAP, LabelMap]:
    """`frame_map` of the official script's inputs: a label map (pbtxt), a ground-truth
    CSV, a detections CSV (read a row at a time) and, optionally, an
    excluded-timestamps CSV."""
    classes = read_label_map(label_map)
    result = frame_map(
        read_ground_truth(ground_truth).keyframes,
        iter_detections(detections),
        label_map=classes,
        excluded=read_excluded(excluded) if excluded else (),
    )
    return result, classes


def _ids(label_map: LabelMap | Iterable[int]) -> Iterable[int]:
    return label_map.ids if isinstance(label_map, LabelMap) else label_map


def _truth_entries(people: Iterable[LabeledBox], allowed: frozenset[int] | None) -> list[_Entry]:
    return [
        (1.0, action_id, p.box.y1, p.box.x1, p.box.y2, p.box.x2)
        for p in people
        for action_id in p.action_ids
        if allowed is None or action_id in allowed
    ]


def _instances(truth: dict[Hashable, dict[int, list[_Entry]]]) -> dict[int, int]:
    """Ground-truth instances per class; a `VidrayError` when there are none."""
    counts: dict[int, int] = {}
    for by_class in truth.values():
        for action_id, boxes in by_class.items():
            counts[action_id] = counts.get(action_id, 0) + len(boxes)
    if not counts:
        raise VidrayError(
            "frame-mAP: no ground-truth box of an evaluated class outside the excluded "
            "keyframes: check the annotations and the evaluation label map"
        )
    return counts


def _top_detections(
    detections: TopDetections
    | Mapping[Hashable, Iterable[Detection]]
    | Iterable[tuple[Hashable, Detection]],
    label_map: LabelMap | Iterable[int] | None,
) -> TopDetections:
    allowed = None if label_map is None else frozenset(_ids(label_map))
    if isinstance(detections, TopDetections):
        if detections.allowed != allowed:
            raise ValueError("the TopDetections were kept for other classes than label_map")
        return detections
    top = TopDetections(allowed)
    pairs = (
        ((key, d) for key, found in detections.items() for d in found)
        if isinstance(detections, Mapping)
        else detections
    )
    for key, detection in pairs:
        top.add(key, detection)
    return top


def _push(heap: list[_Entry], entry: _Entry, limit: int | None) -> None:
    """Feed `entry` to a heap of at most `limit` entries (None: no limit) as the
    official script does: when full, it replaces the smallest entry only with a
    strictly higher score, so the smallest tuple among equal scores goes first."""
    if limit is None or len(heap) < limit:
        heapq.heappush(heap, entry)
    elif entry[0] > heap[0][0]:
        heapq.heapreplace(heap, entry)


def _heap(entries: Iterable[_Entry]) -> list[_Entry]:
    """All `entries` in a heap: the official script reads ground truth through one too,
    which orders each keyframe's boxes (and so decides between equal IoUs)."""
    heap: list[_Entry] = []
    for entry in entries:
        _push(heap, entry, None)
    return heap


def _descending(heap: list[_Entry]) -> list[_Entry]:
    """A heap's entries by descending score; equal scores in the heap's array order."""
    return sorted(heap, key=lambda entry: -entry[0])


def _by_class(entries: list[_Entry], *, drop_empty: bool = False) -> dict[int, list[_Entry]]:
    """Entries grouped by action id, in their order; `drop_empty` removes the boxes
    the official evaluator removes from detections (not ``y1 < y2 and x1 < x2``)."""
    grouped: dict[int, list[_Entry]] = {}
    for entry in entries:
        _, action_id, y1, x1, y2, x2 = entry
        if not drop_empty or (y1 < y2 and x1 < x2):
            grouped.setdefault(action_id, []).append(entry)
    return grouped


def _yxyx(entries: list[_Entry]) -> np.ndarray:
    return np.asarray([entry[2:] for entry in entries], float).reshape(-1, 4)


def _match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True-positive flags of one keyframe's detections of one class, in their order."""
    hits = np.zeros(len(found), bool)
    if not len(truth):
        return hits
    iou = _iou(found, truth)
    best = np.argmax(iou, axis=1)
    taken = np.zeros(len(truth), bool)
    for i, j in enumerate(best):
        if iou[i, j] >= IOU_THRESHOLD and not taken[j]:
            hits[i] = taken[j] = True
    return hits


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of (y1, x1, y2, x2) boxes, computed as the TF API's ``np_box_ops``
    does: areas are not clipped, so an inverted ground-truth box scores as it does there."""
    heights = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    widths = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(heights, 0.0) * np.maximum(widths, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is NaN there too
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def _joined(parts: list[np.ndarray] | None) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0)
