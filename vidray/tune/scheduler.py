"""ASHA for sweeps of training runs: it never stops a trial at the trial's last epoch.

ASHA stops a trial that ranks in the bottom share at a rung. When a rung falls on a
trial's last epoch (4 epochs with rungs at 2 and 4), stopping it saves no training,
and Tune would kill the trial while `run_training` logs its checkpoint and ends its
MLflow run: the run was left RUNNING, with no end time and no checkpoint. The trial
still counts in the rung, so the trials after it are ranked as before.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class FinishingASHA(ASHAScheduler):
    """`ASHAScheduler` that lets a trial finish once it has reported its last epoch;
    ``epochs[i]`` is trial ``i``'s (``config["index"]``) number of epochs."""

    def __init__(self, *, epochs: list[int], **asha: Any) -> None:
        super().__init__(**asha)
        self._epochs = epochs

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        last = result.get(self._time_attr, 0) >= self._epochs[trial.config["index"]]
        return TrialScheduler.CONTINUE if last else decision
