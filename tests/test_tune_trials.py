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


EPOCHS = 4  # of the resumed trial: room for a kill that lands an epoch late


def resume_point(run_dir: Path) -> int:
    """The epoch of the latest checkpoint Ray Train registered in ``run_dir``: where a
    restarted run continues."""
    from ray.train import Result

    return int(Result.from_path(str(run_dir.resolve())).metrics["epoch"])


@pytest.mark.slow
def test_a_sweep_killed_in_a_trials_second_epoch_resumes_it_from_its_last_checkpoint(
    sweep_data,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """``vidray tune`` of one 4-epoch trial, killed (SIGKILL to the driver and the Ray it
    started) as soon as the trial's Ray Train run has registered its epoch-1 checkpoint,
    so in epoch 2; then ``--resume``. The trial continues from its last registered
    checkpoint (epoch k: 1, later only where the kill came late) in a new MLflow run
    that logs epochs k+1..4 only, its optimiser step count going on from epoch k's; the
    run the killed driver left RUNNING ends KILLED, and the sweep finishes.

    Rank 0 logs an epoch to MLflow before Ray Train registers its checkpoint, and on a
    busy machine the controller that registers it lags the workers by seconds: the
    killed run may have logged an epoch past k (trained, then lost with the driver).
    Only such an epoch is logged in both runs."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    write_sweep(
        tmp_path,
        None,
        {"optim.lr": {"grid": [0.003]}},
        {"name": "midway", "scheduler": "fifo"},
        epochs=EPOCHS,
    )
    command = [VIDRAY, "tune", "--config", "sweep.yaml", "--data", "data", "ray.num_cpus=2"]
    run_dir = Path("runs/midway_trials/midway-trial000")  # the trial's Ray Train run

    def epoch_1_checkpoint_registered() -> bool:
        """the trial's Ray Train run registering its epoch-1 checkpoint"""
        # Written once the checkpoint folder is complete: a restarted run continues
        # from the latest checkpoint it names.
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        return snapshot.is_file() and "epoch_001" in snapshot.read_text()

    killed = stop_when(
        command, user_env(), tmp_path / "1.log", epoch_1_checkpoint_registered, signal.SIGKILL
    )
    assert killed == -signal.SIGKILL
    k = resume_point(run_dir)
    assert 1 <= k < EPOCHS  # killed in the middle of the trial
    client = default_store()
    _, (first,) = sweep_runs(client, "midway")
    assert first.info.status == "RUNNING"  # the killed driver could not end it
    logged = steps(client, first)
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= k

    finished = subprocess.run(
        [*command, "--resume"], env=user_env(), capture_output=True, text=True, timeout=240
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "1 trials: 1 finished" in finished.stdout, finished.stdout[-2000:]
    assert_resumed_at(client, k + 1, killed_logged=logged)


def assert_resumed_at(client: MlflowClient, epoch: int, *, killed_logged: list[int]) -> None:
    """Sweep "midway" finished, its trial's second run trained from ``epoch`` on, the
    first (which had logged ``killed_logged``) ended KILLED: both runs' statuses, tags
    and metrics, and the sweep's table."""
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
    assert tracking.INTERRUPTED_TAG not in resumed.data.tags
    for run in runs:
        assert_trial_tags(run, sweep="midway", parent=parent, trial=0)
    # Epochs up to the checkpoint are neither trained nor logged again.
    assert steps(client, first) == killed_logged
    assert steps(client, resumed) == list(range(epoch, EPOCHS + 1))
    per_epoch = int(resumed.data.params["data.steps_per_epoch"])
    counts = client.get_metric_history(resumed.info.run_id, tracking.TRAIN_STEP)
    # The schedule came along: the optimiser step count goes on from the checkpoint's.
    assert sorted((m.step, m.value) for m in counts) == [
        (e, e * per_epoch) for e in range(epoch, EPOCHS + 1)
    ]
    with open("sweeps/midway/trials.csv") as f:
        (row,) = csv.DictReader(f)
    assert (row["status"], row["epochs"]) == ("finished", str(EPOCHS))
    assert json.loads(Path("sweeps/midway/sweep.json").read_text())["parent_run_id"] == (
        parent.info.run_id
    )
