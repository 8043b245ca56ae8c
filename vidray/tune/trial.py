"""One Tune trial: the training pipeline of ``vidray train``, its epochs reported to Tune.

The trial's config (what Tune passes, and what a searcher or PBT changes) is
``{"index": i, "overrides": {dotted key: value}}``: the overrides are the trial's
point of the search space, applied to the sweep's shared config. The index is the
number Tune's trial directory was named with at creation (``trial007``) and names
the trial everywhere else (its MLflow run, its Ray Train run); PBT copies another
trial's whole config into a trial it exploits, so a running trial reads its index
from its directory, never from its config.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from vidray import tracking
from vidray.train.driver import run_training

if TYPE_CHECKING:
    from vidray.tune.sweep import SweepPlan


def index_of(trial_dir: str) -> int | None:
    """A trial's index from its directory (``.../trial007`` -> 7), None for another."""
    match = re.fullmatch(r"trial(\d+)", PurePosixPath(trial_dir).name)
    return int(match[1]) if match else None


def trial_dirname(trial: Any) -> str:
    """Tune's directory for a trial, named by its index in the sweep (``trial007``): Tune
    calls this when it creates a trial (``TuneConfig.trial_dirname_creator``)."""
    return f"trial{trial.config['index']:03d}"


def run_trial(config: dict[str, Any], *, plan: SweepPlan, parent_run_id: str) -> None:
    """One Tune trial (the trainable): ``config["overrides"]`` trained as ``vidray train``
    would, every epoch reported to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    index = index_of(tune.get_context().get_trial_dir())
    if index is None:
        index = config["index"]
    cfg = plan.trial_config(config["overrides"])
    # Every trial logs its model; only the best trial's is registered (`_register_best`).
    cfg = replace(cfg, train=replace(cfg.train, register_model=""))
    name = plan.sweep.sweep.name
    tags = {
        tracking.PARENT_RUN_TAG: parent_run_id,
        tracking.SWEEP_TAG: name,
        tracking.TRIAL_TAG: str(index),
    }
    if plan.sweep.sweep.scheduler == "pbt":
        # PBT restarts a trial from checkpoints Tune hands it (its own, or another's).
        from vidray.tune.pbt import run_pbt_trial

        run_pbt_trial(cfg, plan=plan, index=index, tags=tags)
        return
    # A fixed run name per trial: a trial restarted by --resume finds its own
    # Ray Train run and continues from its last checkpoint.
    cfg = replace(
        cfg,
        train=replace(
            cfg.train, run_name=f"{name}-trial{index:03d}", storage_path=plan.trials_path
        ),
    )
    run_training(cfg, tags=tags, callbacks=[TuneReportCallback()])
