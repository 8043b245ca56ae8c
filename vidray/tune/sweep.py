"""The sweep driver: a sweep file -> Ray Tune trials of the training pipeline -> MLflow.

trials = expand(sweep)                       # every trial, known up front
validate(sweep, trials)                      # a bad one fails before any starts
parent = MLflow run (space, scheduler)       # one per sweep
Tuner(trial -> run_training(..., TuneReportCallback), ASHA).fit()
                                             # one nested MLflow run per trial
summarize -> trials.csv, sweep.png, best_config.yaml on the parent run

Every trial trains with `vidray.train.driver.run_training`, the code path of
``vidray train``: the same shards (clips are derived at read time, never
re-decoded), the same params and metric names, so MLflow's compare view lines
trials up with plain training runs. The trial list and the parent run id are
kept in ``<output>/sweep.json``; ``sweep.resume=true`` (``--resume``) restores
the Tune experiment with ``Tuner.restore``: finished trials are not re-run, an
interrupted one continues from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vidray import storage, tracking
from vidray.data.manifest import read_dataset_info
from vidray.errors import VidrayError
from vidray.train.driver import check_data, run_training
from vidray.train.inputs import resolve_inputs
from vidray.tune.report import (
    TrialRow,
    format_table,
    plot_sweep,
    trial_rows,
    write_best_config,
    write_table,
)
from vidray.tune.space import Sweep, describe_space, expand, trial_name

STATE_FILE = "sweep.json"
# The trial function only waits on its trainer. Tune refuses an empty resource
# bundle, and any CPU it held would be missing for the trial's Ray Data readers
# (a sweep on 2 cores then hangs); a byte of memory is a bundle that holds no CPU,
# so a trial gets exactly the resources `vidray train` would.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
TRIAL_TAG = "vidray.trial"
STOPPED_TAG = "vidray.stopped_early"  # what stopped a trial: asha, or time_budget
BUDGET_TAG = "vidray.time_budget_reached"  # on the parent run of a sweep the budget ended


@dataclass
class SweepResult:
    rows: list[TrialRow]
    metric: str
    output: Path
    parent_run_id: str
    tracking_uri: str

    def report(self) -> str:
        done = sum(r.status == "finished" for r in self.rows)
        stopped = sum(r.status == "stopped early" for r in self.rows)
        lines = [
            f"tune: {len(self.rows)} trials: {done} finished, {stopped} stopped early, "
            f"{len(self.rows) - done - stopped} failed or not run"
        ]
        best = next((r for r in self.rows if r.best is not None), None)
        if best:
            lines.append(f"tune: best {self.metric} {best.best:.3f}: {best.label}")
        lines.append(f"tune: table, plot and best config in {self.output}")
        lines.append(
            f"tune: MLflow parent run {self.parent_run_id}: "
            f"{tracking.ui_command(self.tracking_uri)}"
        )
        return "\n".join(lines)


def validate(sweep: Sweep, trials: list[dict[str, Any]]) -> None:
    """Check every trial against the data as ``vidray train`` would, before any starts."""
    base = sweep.config({})
    if not base.train.data:
        raise VidrayError("train.data is not set: pass --data DIR (an ingest output)")
    info = read_dataset_info(base.train.data)
    for index, trial in enumerate(trials):
        try:
            cfg = sweep.config(trial)
            check_data(resolve_inputs(cfg), info)
        except VidrayError as exc:
            raise VidrayError(f"trial {index} ({trial_name(trial)}): {exc}") from None


def _trial(config: dict[str, Any], *, sweep: Sweep, parent_run_id: str, trials_path: str) -> None:
    """One Tune trial: the training pipeline, its epochs reported to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    index, overrides = config["index"], config["overrides"]
    cfg = sweep.config(overrides)
    # A fixed run name per trial: a trial restarted by --resume finds its own
    # Ray Train run and continues from its last checkpoint.
    cfg = replace(
        cfg,
        train=replace(
            cfg.train, run_name=f"{sweep.sweep.name}-trial{index:03d}", storage_path=trials_path
        ),
    )
    run_training(
        cfg,
        tags={
            "mlflow.parentRunId": parent_run_id,
            "vidray.sweep": sweep.sweep.name,
            TRIAL_TAG: str(index),
        },
        callbacks=[TuneReportCallback()],
    )


def run_sweep(sweep: Sweep) -> SweepResult:
    """Run (or, with ``sweep.resume``, continue) a sweep; needs a running Ray."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    settings = sweep.sweep
    trials = expand(sweep)
    validate(sweep, trials)
    base = sweep.config({})
    uri = tracking.tracking_uri(base.mlflow)
    tracking.check_reachable(uri)
    root = storage.resolve(base.train.storage_path)
    experiment = f"{root.rstrip('/')}/{settings.name}"
    output = sweep.output_dir()
    state_file = output / STATE_FILE

    if settings.resume:
        if not state_file.is_file() or not storage.exists(experiment):
            raise VidrayError(
                f"sweep {settings.name!r} has nothing to resume ({state_file} or {experiment} "
                "is missing): run it without --resume"
            )
        state = json.loads(state_file.read_text())
        if state["trials"] != trials:
            raise VidrayError(
                f"the sweep file now gives other trials than {state_file} records: resume "
                "with the file it started with, or start a new sweep.name"
            )
        parent = state["parent_run_id"]
        _close_interrupted(uri, parent)
    else:
        if storage.exists(experiment) or state_file.exists():
            raise VidrayError(
                f"sweep {settings.name!r} exists ({experiment}): pass --resume to continue it, "
                "or set sweep.name"
            )
        parent = tracking.start_run(
            base, uri=uri, run_name=settings.name, tags={"vidray.task": "tune"}
        )
        tracking.log_params(
            uri,
            parent,
            {
                **describe_space(sweep),
                **{f"sweep.{k}": v for k, v in vars(settings).items() if k != "resume"},
                "sweep.trials": len(trials),
                "sweep.file": sweep.source,
            },
        )
        output.mkdir(parents=True, exist_ok=True)
        state_file.write_text(
            json.dumps({"parent_run_id": parent, "experiment": experiment, "trials": trials})
        )
    print(f"tune: {len(trials)} trials, scheduler {settings.scheduler}; parent run {parent}")

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            sweep=sweep,
            parent_run_id=parent,
            trials_path=f"{root.rstrip('/')}/{settings.name}_trials",
        ),
        TRIAL_DRIVER_RESOURCES,
    )
    if not storage.is_uri(root):
        # Tune saves its experiment state at most this often; a driver killed just
        # after a trial ends must find that trial recorded as done on --resume.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    t0 = time.monotonic()
    status = "FAILED"
    try:
        if settings.resume:
            tuner = tune.Tuner.restore(
                experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            epochs = max(sweep.config(t).train.epochs for t in trials)
            scheduler = (
                ASHAScheduler(
                    time_attr="training_iteration",
                    # One past the last epoch: at max_t ASHA stops a trial itself, which
                    # would cut off the end of run_training (the checkpoint artifact).
                    max_t=epochs + 1,
                    grace_period=settings.grace_period,
                    reduction_factor=settings.reduction_factor,
                )
                if settings.scheduler == "asha"
                else FIFOScheduler()
            )
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "index": tune.grid_search(list(range(len(trials)))),
                    "overrides": tune.sample_from(lambda config: trials[config["index"]]),
                },
                tune_config=tune.TuneConfig(
                    metric=settings.metric,
                    mode=settings.mode,
                    scheduler=scheduler,
                    num_samples=1,
                    max_concurrent_trials=settings.max_concurrent_trials,
                    time_budget_s=settings.time_budget_s or None,
                ),
                run_config=tune.RunConfig(name=settings.name, storage_path=root),
            )
        grid = tuner.fit()
        # The latest run of each trial (a resumed trial has one per attempt).
        runs = {int(r.data.tags[TRIAL_TAG]): r for r in _trial_runs(uri, parent)}
        rows = trial_rows(grid, trials, sweep, runs)
        unfinished = sum(r.status in ("stopped early", "not run") for r in rows)
        out_of_time = unfinished > 0 and 0 < settings.time_budget_s <= time.monotonic() - t0
        if out_of_time:
            print(
                f"tune: time budget of {settings.time_budget_s:g} s reached: "
                f"{unfinished} of {len(rows)} trials stopped early or not run"
            )
            tracking.client(uri).set_tag(parent, BUDGET_TAG, "true")
        # FIFO never stops a trial: one cut short met the budget. ASHA's are ASHA's,
        # or the budget's when it was reached (the parent run's tag says so).
        stopped_by = "time_budget" if out_of_time and settings.scheduler == "fifo" else None
        _mark_children(uri, rows, stopped_by or settings.scheduler)
        written = [
            write_table(output / "trials.csv", rows, sweep),
            plot_sweep(output / "sweep.png", rows, sweep),
        ]
        best = next((r for r in rows if r.best is not None), None)
        if best is not None:
            written.append(write_best_config(output / "best_config.yaml", sweep, best))
            tracking.log_metrics(uri, parent, {f"best/{settings.metric}": best.best}, step=0)
        for path in written:
            tracking.log_artifact(uri, parent, path)
        tracking.log_metrics(uri, parent, {"time/sweep_s": time.monotonic() - t0}, step=0)
        print(format_table(rows, sweep))
        failed = [r for r in rows if r.status == "failed"]
        if failed:
            # Everything above is written and logged; the exit status still says that
            # part of the sweep is missing, so a Ray job of it shows FAILED.
            raise VidrayError(
                f"{len(failed)} of {len(rows)} trials failed (trial {failed[0].index}: "
                f"{failed[0].error or 'see the Ray logs'}): see {output / 'trials.csv'}"
            )
        status = "FINISHED"
        return SweepResult(
            rows=rows, metric=settings.metric, output=output, parent_run_id=parent, tracking_uri=uri
        )
    finally:
        tracking.end_run(uri, parent, status=status)


def _trial_runs(uri: str, parent: str) -> list[Any]:
    """The MLflow runs nested under ``parent``, oldest first."""
    client = tracking.client(uri)
    return client.search_runs(
        experiment_ids=[client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )


def _close_interrupted(uri: str, parent: str) -> None:
    """Trial runs a killed driver left RUNNING end as KILLED, so the UI shows none live."""
    for run in _trial_runs(uri, parent):
        if run.info.status == "RUNNING":
            tracking.client(uri).set_tag(run.info.run_id, "vidray.interrupted", "true")
            tracking.end_run(uri, run.info.run_id, status="KILLED")


def _mark_children(uri: str, rows: list[TrialRow], stopped_by: str) -> None:
    """Trials stopped early get a tag saying by what and end as KILLED, not left RUNNING."""
    client = tracking.client(uri)
    for row in rows:
        if not row.run_id:
            continue
        client.set_tag(row.run_id, "vidray.trial_status", row.status)
        if row.status == "stopped early":
            client.set_tag(row.run_id, STOPPED_TAG, stopped_by)
            tracking.end_run(uri, row.run_id, status="KILLED")
        elif row.status != "finished" and client.get_run(row.run_id).info.status == "RUNNING":
            tracking.end_run(uri, row.run_id, status="FAILED")
