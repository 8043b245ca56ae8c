"""The sweep's trial scheduler (``sweep.scheduler``), from its settings.

- ``fifo``: every trial runs all its epochs.
- ``asha``: ASHA, which stops a trial ranked in the bottom share at a rung, but
  never at the trial's last epoch (`FinishingASHA`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

if TYPE_CHECKING:
    from vidray.tune.space import Sweep
    from vidray.tune.sweep import SweepPlan


def make_scheduler(plan: SweepPlan) -> TrialScheduler:
    """The Tune scheduler ``sweep.scheduler`` names, set up from the sweep's settings."""
    settings = plan.sweep.sweep
    if settings.scheduler == "asha":
        return FinishingASHA(
            sweep=plan.sweep,
            time_attr="training_iteration",
            max_t=max(plan.sweep.max_epochs(), settings.grace_period),
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    return FIFOScheduler()


class FinishingASHA(ASHAScheduler):
    """`ASHAScheduler` that lets a trial finish once it has reported its last epoch.

    When a rung falls on a trial's last epoch (4 epochs with rungs at 2 and 4),
    stopping it saves no training, and Tune would kill the trial while
    `run_training` logs its checkpoint and ends its MLflow run: the run was left
    RUNNING, with no end time and no checkpoint. The trial still counts in the rung,
    so the trials after it are ranked as before.
    """

    def __init__(self, *, sweep: Sweep, **asha: Any) -> None:
        super().__init__(**asha)
        self._sweep = sweep

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        epochs = self._sweep.config(trial.config["overrides"]).train.epochs
        last = result.get(self._time_attr, 0) >= epochs
        return TrialScheduler.CONTINUE if last else decision
