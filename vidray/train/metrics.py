"""Clip and video accuracy: a video's prediction is the mean softmax of its clips.

Evaluation adds per-class views of the video predictions: a confusion matrix
of counts (rows = true class, columns = predicted), each class's accuracy and
their mean, which weighs every class equally however many videos it has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidray import tracking


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs / probs.sum(axis=1, keepdims=True)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row: is the label among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the (at most) k best classes, best first, and their scores."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]
    return order, np.take_along_axis(scores, order, axis=1)


def video_scores(
    probs: np.ndarray, labels: np.ndarray, video_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average clip probabilities per video -> (keys, mean probs, labels)."""
    keys, inverse = np.unique(video_keys, return_inverse=True)
    sums = np.zeros((len(keys), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(keys))[:, None]
    video_labels = np.zeros(len(keys), np.int64)
    video_labels[inverse] = labels
    return keys, sums / counts, video_labels


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: entry (i, j) is how many items of true class i were predicted as j."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Each class's accuracy (recall) from a confusion matrix; NaN for a class with no items."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def mean_class_accuracy(matrix: np.ndarray) -> float:
    """The mean of the per-class accuracies over the classes that have items."""
    accuracy = per_class_accuracy(matrix)
    present = ~np.isnan(accuracy)
    return float(accuracy[present].mean()) if present.any() else float("nan")


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, video_keys: np.ndarray, *, prefix: str
) -> dict[str, float]:
    """``{prefix}/loss``, clip top-1 and video top-1 / top-5 of a set of clip logits."""
    if len(labels) == 0:
        return {}
    probs = softmax(logits)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    _, vprobs, vlabels = video_scores(probs, labels, video_keys)
    values = {
        tracking.LOSS: float(nll.mean()),
        tracking.CLIP_TOP1: float(topk_correct(probs, labels, 1).mean()),
        tracking.VIDEO_TOP1: float(topk_correct(vprobs, vlabels, 1).mean()),
        tracking.VIDEO_TOP5: float(topk_correct(vprobs, vlabels, 5).mean()),
    }
    return {tracking.split_metric(prefix, name): value for name, value in values.items()}


@dataclass
class VideoPredictions:
    """Per-video results of an evaluation, in the order of ``keys``."""

    keys: np.ndarray  # video_key of each video
    labels: np.ndarray  # true class
    probs: np.ndarray  # (videos, classes): mean softmax over all the video's clips
    confusion: np.ndarray  # (classes, classes) counts of videos
    metrics: dict[str, float]  # clip_top1, video_top1, video_top5, mean_class_acc

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def per_class(self) -> np.ndarray:
        return per_class_accuracy(self.confusion)


def video_predictions(
    logits: np.ndarray, labels: np.ndarray, video_keys: np.ndarray, num_classes: int
) -> VideoPredictions:
    """Clip logits (every view of every window) -> video predictions and their metrics."""
    probs = softmax(logits)
    keys, vprobs, vlabels = video_scores(probs, labels, video_keys)
    confusion = confusion_matrix(vlabels, vprobs.argmax(axis=1), num_classes)
    metrics = {
        tracking.CLIP_TOP1: float(topk_correct(probs, labels, 1).mean()),
        tracking.VIDEO_TOP1: float(topk_correct(vprobs, vlabels, 1).mean()),
        tracking.VIDEO_TOP5: float(topk_correct(vprobs, vlabels, 5).mean()),
        tracking.MEAN_CLASS_ACC: mean_class_accuracy(confusion),
    }
    return VideoPredictions(keys, vlabels, vprobs, confusion, metrics)
