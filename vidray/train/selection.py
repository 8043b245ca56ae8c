"""Which epoch's checkpoint is a run's best, and the score that makes Ray keep it.

The rule: the highest validation metric (val video accuracy, val frame-mAP),
then the lowest val loss, then the later epoch. A small val set ties often
(8 videos give accuracy in steps of 1/8); taking the first epoch to reach the
top score picked a less trained model than a later epoch with the same
accuracy and a lower loss. A NaN metric or loss never wins.

Ray Train keeps the ``num_to_keep`` checkpoints with the highest score (ties
go to the more recent) and deletes the others, except the latest, which it
always keeps as the resume point. Ranked by the val metric alone, epochs tied
at the top lost their earlier, lower-loss members before the rule saw them.
So every epoch reports `SCORE`: its epoch number if the rule makes it the best
so far, else 0. A new best always comes later than the one it beats, so the
best by the rule has the highest score, and with ``num_to_keep=1`` Ray keeps
exactly two checkpoints: the best and the latest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vidray import tracking
from vidray.errors import VidrayError

SCORE = "checkpoint/score"  # what Ray ranks checkpoints by; not an MLflow metric


def rank(metrics: dict[str, Any], metric: str) -> tuple[float, float, float]:
    """The rule as a sort key: larger is better."""

    def worst_if_nan(value: float) -> float:
        return -math.inf if math.isnan(value) else value

    return (
        worst_if_nan(metrics.get(metric, -math.inf)),
        worst_if_nan(-metrics.get(tracking.VAL_LOSS, math.inf)),
        metrics.get("epoch", -1),
    )


def select_best(kept: Sequence[tuple[Any, dict[str, Any]]], metric: str) -> tuple[Any, dict]:
    """The best of the (checkpoint, metrics) pairs Ray kept, by the rule."""
    if not kept:
        raise VidrayError("training reported no checkpoint")
    return max(kept, key=lambda pair: rank(pair[1], metric))


@dataclass
class BestSoFar:
    """The metrics of the best epoch so far, by the rule; `update` gives each epoch's `SCORE`."""

    metric: str
    best: dict[str, Any] | None = None

    def update(self, metrics: dict[str, Any]) -> int:
        """Record one epoch's metrics (``epoch`` numbered from 1); its score for Ray."""
        if self.best is not None and rank(metrics, self.metric) <= rank(self.best, self.metric):
            return 0
        self.best = metrics
        return int(metrics["epoch"])
