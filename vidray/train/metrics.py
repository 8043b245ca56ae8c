"""Clip and video accuracy: a video's prediction is the mean softmax of its clips."""

from __future__ import annotations

import numpy as np


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row: is the label among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


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


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, video_keys: np.ndarray, *, prefix: str
) -> dict[str, float]:
    """``{prefix}/loss``, clip top-1 and video top-1 / top-5 of a set of clip logits."""
    if len(labels) == 0:
        return {}
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    _, vprobs, vlabels = video_scores(probs, labels, video_keys)
    return {
        f"{prefix}/loss": float(nll.mean()),
        f"{prefix}/clip_top1": float(topk_correct(probs, labels, 1).mean()),
        f"{prefix}/video_top1": float(topk_correct(vprobs, vlabels, 1).mean()),
        f"{prefix}/video_top5": float(topk_correct(vprobs, vlabels, 5).mean()),
    }
