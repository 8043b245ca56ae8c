"""The sweep's trial scheduler (``sweep.scheduler``), from its settings.

- ``fifo``: every trial runs all its epochs.
- ``asha``: ASHA, which stops a trial ranked in the bottom share at a rung
  (`FinishingASHA`).
- ``median``: the median stopping rule (Vizier), which stops a trial whose best
  result so far is worse than the median of the other trials' running means up
  to the same epoch (`FinishingMedian`).
- ``pbt``: population-based training (`vidray.tune.pbt`).

Neither stopping rule stops a trial at its last epoch (`LetLastEpochFinish`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    TrialScheduler,
)

if TYPE_CHECKING:
    from vidray.tune.space import Sweep
    from vidray.tune.sweep import SweepPlan


def make_scheduler(plan: SweepPlan) -> TrialScheduler:
    """The Tune scheduler ``sweep.scheduler`` names, set up from the sweep's settings
    (the metric and mode reach it from the Tuner's TuneConfig)."""
    settings = plan.sweep.sweep
    if settings.scheduler == "pbt":
        from vidray.tune.pbt import population_based_training

        return population_based_training(plan)
    if settings.scheduler == "asha":
        return FinishingASHA(
            sweep=plan.sweep,
            time_attr="training_iteration",
            max_t=max(plan.sweep.max_epochs(), settings.grace_period),
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if settings.scheduler == "median":
        return FinishingMedian(
            sweep=plan.sweep,
            time_attr="training_iteration",
            grace_period=settings.grace_period,
            min_samples_required=settings.median_min_trials,
            # Never pause a trial while too few others are there to compare it with:
            # a paused trial's process ends mid-run and its training starts over in a
            # new one. Tune pauses once a trial has run longer than this since its last
            # pause (never, for an infinite slice).
            min_time_slice=math.inf,
        )
    return FIFOScheduler()


class LetLastEpochFinish:
    """A stopping rule that lets a trial finish once it has reported its last epoch.

    When a stop falls on a trial's last epoch (4 epochs with ASHA's rungs at 2 and 4),
    stopping it saves no training, and Tune would kill the trial while
    `run_training` logs its checkpoint and ends its MLflow run: the run was left
    RUNNING, with no end time and no checkpoint. The rule still records the result,
    so the trials after it are compared as before.
    """

    _time_attr: str

    def __init__(self, *, sweep: Sweep, **rule: Any) -> None:
        super().__init__(**rule)
        self._sweep = sweep

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        epochs = self._sweep.config(trial.config["overrides"]).train.epochs
        last = result.get(self._time_attr, 0) >= epochs
        return TrialScheduler.CONTINUE if last else decision


class FinishingASHA(LetLastEpochFinish, ASHAScheduler):
    """`ASHAScheduler` that never stops a trial at its last epoch."""


class FinishingMedian(LetLastEpochFinish, MedianStoppingRule):
    """`MedianStoppingRule` that never stops a trial at its last epoch."""
