"""Evaluation reports: the files a person opens after ``vidray evaluate``.

    predictions.csv       one row per video: video_id, label, predicted, correct,
                          the top-5 classes and their mean-softmax scores
    per_class.csv         one row per class: videos, correct, accuracy
    confusion_matrix.png  counts of videos, true class down, predicted across

Plain functions over arrays: no model, no Ray, no MLflow.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vidray.train.metrics import VideoPredictions, topk

PREDICTIONS_FILE = "predictions.csv"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.png"
TOP_K = 5
ANNOTATE_MAX_CLASSES = 30  # above this, counts in cells are unreadable: colour only


def write_predictions(
    path: str | Path, result: VideoPredictions, video_ids: Sequence[str], classes: Sequence[str]
) -> Path:
    """predictions.csv: one row per video, ``video_ids`` in the order of ``result.keys``."""
    best, scores = topk(result.probs, TOP_K)
    k = best.shape[1]
    header = ["video_id", "label", "predicted", "correct"]
    for i in range(1, k + 1):
        header += [f"top{i}_class", f"top{i}_score"]
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for v, video_id in enumerate(video_ids):
            label, predicted = int(result.labels[v]), int(best[v, 0])
            row = [video_id, classes[label], classes[predicted], int(label == predicted)]
            for c, s in zip(best[v], scores[v], strict=True):
                row += [classes[int(c)], f"{s:.6f}"]
            writer.writerow(row)
    return path


def write_per_class(path: str | Path, result: VideoPredictions, classes: Sequence[str]) -> Path:
    """per_class.csv: videos, correct and accuracy of every class (empty accuracy: no videos)."""
    totals = result.confusion.sum(axis=1)
    correct = np.diag(result.confusion)
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "videos", "correct", "accuracy"])
        for i, name in enumerate(classes):
            accuracy = "" if totals[i] == 0 else f"{correct[i] / totals[i]:.6f}"
            writer.writerow([name, int(totals[i]), int(correct[i]), accuracy])
    return path


def plot_confusion_matrix(
    path: str | Path, matrix: np.ndarray, classes: Sequence[str], *, title: str = ""
) -> Path:
    """A PNG of a confusion matrix of counts with the class names on both axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    size = min(4.0 + 0.35 * n, 40.0)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend pyplot would pick
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="videos")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if n <= ANNOTATE_MAX_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
