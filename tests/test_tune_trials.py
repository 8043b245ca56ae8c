"""Sweeps whose trials run the distributed trainer, and a sweep resumed in the middle of
a trial: run as a user runs them, in a fresh working directory with a relative
``--data``, the default ``sqlite:///mlflow.db`` and the default ``runs/`` storage.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_tune import REPO, child_runs, ended, stop_when, sweep_data, write_sweep  # noqa: F401

from vidray import tracking
from vidray.cli import run_command

# What a user types: the console script installed beside this interpreter.
VIDRAY = str(Path(sys.executable).with_name("vidray"))
EXPERIMENT = "sweeps"  # write_sweep's MLflow experiment


def user_env() -> dict[str, str]:
    """The environment of a user's shell: no Ray cluster to join, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def default_store() -> MlflowClient:
    """A client of ./mlflow.db, the default store, by its absolute path: MLflow keeps one
    store per URI string, and a relative one would read an earlier test's database."""
    return MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")


def sweep_runs(client: MlflowClient, name: str) -> tuple[object, list]:
    """The parent run of sweep ``name`` in ./mlflow.db and its trial runs, oldest first."""
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], f"attributes.run_name = '{name}'")
    return parent, sorted(child_runs(client, parent), key=lambda r: r.info.start_time)


def steps(client: MlflowClient, run, metric: str = tracking.VAL_VIDEO_TOP1) -> list[int]:
    """The epochs (steps) at which ``run`` logged ``metric``, in order."""
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


def assert_trial_tags(run, *, sweep: str, parent, trial: int) -> None:
    """The tags README's sweep section names on every trial run: its parent, sweep and
    index, and that it is a training run (the same as ``vidray train`` makes)."""
    tags = run.data.tags
    assert tags[tracking.PARENT_RUN_TAG] == parent.info.run_id
    assert tags[tracking.SWEEP_TAG] == sweep
    assert tags[tracking.TRIAL_TAG] == str(trial)
    assert tags[tracking.TASK_TAG] == "train"


def worker_history(client: MlflowClient, run, rank: int, name: str) -> dict[int, float]:
    """What worker ``rank`` reported as ``name``, by epoch, in ``run``."""
    history = client.get_metric_history(run.info.run_id, tracking.worker_metric(rank, name))
    return {m.step: m.value for m in history}


def tune_results(trial_dir: Path) -> list[dict]:
    """What Tune recorded of a trial: one result per epoch (result.json, a JSON line each)."""
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_a_sweep_whose_trials_run_two_train_workers_gets_both_workers_reports(
    sweep_data,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Two trials, one after the other, each a 2-worker Ray Train run (half a CPU a
    worker, as on this 2-core machine), 2 epochs.

    Every epoch, each worker's own report reaches the trial's MLflow run as
    ``worker/<rank>/...``: both ranks trained on a share of the training windows, and
    the shares add up to all of them. Rank 0's report is the one Tune records (one
    result per epoch), and rank 0 steps only through its share (``train/global_step``:
    fewer optimiser steps than all windows take)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    write_sweep(
        tmp_path,
        None,
        {"optim.lr": {"grid": [0.003, 0.001]}},
        {"name": "pairs", "scheduler": "fifo", "max_concurrent_trials": 1},
        epochs=2,
        workers=2,
        cpus_per_worker=0.5,
    )
    assert run_command("tune", ["--config", "sweep.yaml", "--data", "data"]) == 0
    client = default_store()
    parent, runs = sweep_runs(client, "pairs")
    assert parent.info.status == "FINISHED" and ended(parent)
    assert parent.data.tags[tracking.TASK_TAG] == "tune"
    assert tracking.BUDGET_TAG not in parent.data.tags
    assert sorted(int(r.data.tags[tracking.TRIAL_TAG]) for r in runs) == [0, 1]
    for run in runs:
        trial = int(run.data.tags[tracking.TRIAL_TAG])
        assert_trial_tags(run, sweep="pairs", parent=parent, trial=trial)
        assert run.info.status == "FINISHED" and ended(run)
        assert run.data.tags[tracking.TRIAL_STATUS_TAG] == "finished"
        assert tracking.STOPPED_TAG not in run.data.tags
        assert tracking.INTERRUPTED_TAG not in run.data.tags
        params = run.data.params
        assert (params["train.workers"], params["train.cpus_per_worker"]) == ("2", "0.5")
        assert params["optim.lr"] == ("0.003", "0.001")[trial]
        windows, batch = int(params["data.windows_train"]), int(params["train.batch_size"])
        # Rank 0 steps through its half of the windows: fewer steps than all of them take.
        per_epoch = int(params["data.steps_per_epoch"])
        assert per_epoch == math.ceil(windows / 2 / batch) < math.ceil(windows / batch)
        results = tune_results(Path(f"runs/pairs/trial{trial:03d}"))
        assert [r["epoch"] for r in results] == [1, 2]
        assert [r[tracking.TRAIN_LR] for r in results] == [float(params["optim.lr"])] * 2
        assert [r[tracking.TRAIN_STEP] for r in results] == [per_epoch, 2 * per_epoch]
        clips = {rank: worker_history(client, run, rank, tracking.WORKER_CLIPS) for rank in (0, 1)}
        assert all(sorted(history) == [1, 2] for history in clips.values()), clips
        for epoch in (1, 2):
            shares = [clips[rank][epoch] for rank in (0, 1)]
            assert min(shares) > 0 and sum(shares) == windows, shares
        reported = {name for name in run.data.metrics if name.startswith("worker/")}
        assert reported == {
            tracking.worker_metric(rank, name)
            for rank in (0, 1)
            for name in (tracking.WORKER_CLIPS, tracking.EPOCH_SECONDS)
        }
        assert steps(client, run) == [1, 2]


@pytest.mark.slow
def test_a_sweep_killed_in_a_trials_second_epoch_resumes_it_from_its_first_epoch(
    sweep_data,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """``vidray tune`` of one 3-epoch trial, killed (SIGKILL to the driver and the Ray it
    started) once the trial's Ray Train run has registered its epoch-1 checkpoint, so
    during epoch 2; then ``--resume``. The trial continues from that checkpoint in a new
    MLflow run that logs epochs 2 and 3 only (epoch 1 is neither trained nor logged
    again: its optimiser step count goes on from epoch 1's), the run the killed driver
    left RUNNING ends KILLED, and the sweep finishes."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    write_sweep(
        tmp_path,
        None,
        {"optim.lr": {"grid": [0.003]}},
        {"name": "midway", "scheduler": "fifo"},
        epochs=3,
    )
    command = [VIDRAY, "tune", "--config", "sweep.yaml", "--data", "data", "ray.num_cpus=2"]
    snapshot = Path("runs/midway_trials/midway-trial000/checkpoint_manager_snapshot.json")

    def epoch_1_checkpoint_registered() -> bool:
        """the trial's Ray Train run registering its epoch-1 checkpoint"""
        # Ray Train writes this record after the checkpoint folder is complete: a
        # restarted run continues from the latest checkpoint it names.
        return snapshot.is_file() and "epoch_001" in snapshot.read_text()

    killed = stop_when(
        command, user_env(), tmp_path / "1.log", epoch_1_checkpoint_registered, signal.SIGKILL
    )
    assert killed == -signal.SIGKILL
    assert "epoch_002" not in snapshot.read_text()  # killed before epoch 2 was checkpointed
    client = default_store()
    _, (first,) = sweep_runs(client, "midway")
    assert first.info.status == "RUNNING"  # the killed driver could not end it
    assert steps(client, first) == [1]  # killed in epoch 2: the kill came in time

    finished = subprocess.run(
        [*command, "--resume"], env=user_env(), capture_output=True, text=True, timeout=240
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "1 trials: 1 finished" in finished.stdout, finished.stdout[-2000:]
    parent, runs = sweep_runs(client, "midway")
    assert parent.info.status == "FINISHED" and ended(parent)
    assert parent.data.tags[tracking.TASK_TAG] == "tune"
    assert tracking.INTERRUPTED_TAG not in parent.data.tags  # resumed to its end
    first, resumed = runs
    assert first.info.status == "KILLED" and ended(first)
    assert first.data.tags[tracking.INTERRUPTED_TAG] == "true"
    assert first.data.tags[tracking.TRIAL_STATUS_TAG] == "interrupted"  # --resume went on
    assert resumed.info.status == "FINISHED" and ended(resumed)
    assert resumed.data.tags[tracking.TRIAL_STATUS_TAG] == "finished"
    for run in runs:
        assert_trial_tags(run, sweep="midway", parent=parent, trial=0)
    # Each epoch logged once across the trial's runs: the resumed run starts at epoch 2.
    assert steps(client, first) == [1] and steps(client, resumed) == [2, 3]
    step_counts = {
        m.step: m.value
        for run in runs
        for m in client.get_metric_history(run.info.run_id, tracking.TRAIN_STEP)
    }
    per_epoch = int(resumed.data.params["data.steps_per_epoch"])
    assert step_counts == {e: e * per_epoch for e in (1, 2, 3)}  # the schedule came along
    with open("sweeps/midway/trials.csv") as f:
        (row,) = csv.DictReader(f)
    assert (row["status"], row["epochs"]) == ("finished", "3")
    assert json.loads(Path("sweeps/midway/sweep.json").read_text())["parent_run_id"] == (
        parent.info.run_id
    )
