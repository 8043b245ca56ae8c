"""Evaluation metrics against hand computations on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from vidray.train.metrics import (
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    topk,
    topk_correct,
    video_predictions,
)


def _logits(probs):
    """Logits whose softmax is exactly ``probs``."""
    return np.log(np.asarray(probs, dtype=np.float64))


def test_mean_class_accuracy_weighs_classes_not_videos():
    # three videos of class 0, all right; one of class 1, wrong
    labels = np.array([0, 0, 0, 1])
    predicted = np.array([0, 0, 0, 0])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[3, 0, 0], [1, 0, 0], [0, 0, 0]]
    per_class = per_class_accuracy(matrix)
    assert per_class[:2].tolist() == [1.0, 0.0] and np.isnan(per_class[2])
    assert (predicted == labels).mean() == 0.75
    assert mean_class_accuracy(matrix) == 0.5  # (1 + 0) / 2: class 2 has no videos


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix(np.array([0, 1, 1, 2, 2, 2]), np.array([0, 2, 1, 0, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 2]]
    assert per_class_accuracy(matrix).tolist() == [1.0, 0.5, pytest.approx(2 / 3)]


def test_top5_with_fewer_than_five_classes_counts_every_class():
    scores = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    labels = np.array([0, 2])
    assert topk_correct(scores, labels, 5).tolist() == [True, True]
    assert topk_correct(scores, labels, 1).tolist() == [False, False]
    best, values = topk(scores, 5)
    assert best.tolist() == [[2, 1, 0], [0, 1, 2]]
    np.testing.assert_allclose(values, [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])


def test_video_prediction_is_the_mean_softmax_of_its_clips():
    # video 10: clips say 0 (0.9) and 1 (0.6): mean (0.65, 0.35) -> 0, right
    # video 20: one clip, says 1 (0.8), label 0 -> wrong
    # video 30: two clips both say 1, label 1 -> right
    probs = [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]]
    labels = np.array([0, 0, 0, 1, 1])
    keys = np.array([10, 10, 20, 30, 30])
    result = video_predictions(_logits(probs), labels, keys, 2)
    assert result.keys.tolist() == [10, 20, 30]
    np.testing.assert_allclose(result.probs, [[0.65, 0.35], [0.2, 0.8], [0.2, 0.8]])
    assert result.labels.tolist() == [0, 0, 1]
    assert result.predicted.tolist() == [0, 1, 1]
    assert result.confusion.tolist() == [[1, 1], [0, 1]]
    assert result.metrics["clip_top1"] == pytest.approx(3 / 5)  # clips 0, 3, 4
    assert result.metrics["video_top1"] == pytest.approx(2 / 3)
    assert result.metrics["video_top5"] == 1.0
    assert result.metrics["mean_class_acc"] == pytest.approx((1 / 2 + 1) / 2)
