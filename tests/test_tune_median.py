"""Median stopping (``sweep.scheduler: median``) in a real sweep, as a user types it."""

from __future__ import annotations

import csv
import shutil

import pytest
from test_tune import ended, sweep_runs, write_sweep

from vidray.cli import run_command
from vidray.tracking import STOPPED_TAG, TRIAL_STATUS_TAG


@pytest.mark.slow
def test_median_stopping_stops_a_trial_that_lags_the_median_of_the_others(
    motion_data, tmp_path, monkeypatch
):
    """The rule compares trials by ``train/lr`` here, so that who lags is known before
    they run (the schedule is constant: each epoch reports the trial's own rate).
    Trials 0 and 1 (lr 0.001 and 0.003, one epoch each) run first, one at a time: each
    has fewer than sweep.median_min_trials=2 others to compare with and finishes.
    Trial 2 (lr 0, two epochs) is compared from epoch 1 (the grace period) with the
    median of the others' running means up to that epoch (0.002): it lags, and is
    stopped there, before its last epoch. (Under the default of 3 it would run on.)
    """
    monkeypatch.chdir(tmp_path)
    shutil.copytree(motion_data, "data")
    write_sweep(
        tmp_path,
        None,
        {
            "optim.lr": {"grid": [0.001, 0.003, 0.0]},
            "train.epochs": {"grid": [2], "when": {"optim.lr": [0.0]}},
        },
        {
            "name": "median",
            "metric": "train/lr",
            "mode": "max",
            "scheduler": "median",
            "grace_period": 1,
            "median_min_trials": 2,
            "max_concurrent_trials": 1,
        },
        epochs=1,
    )
    assert run_command("tune", ["--config", "sweep.yaml", "--data", "data"]) == 0
    client, parent, children = sweep_runs("median")
    assert parent.data.params["sweep.scheduler"] == "median"
    assert sorted(children) == [0, 1, 2]
    params = [children[i].data.params for i in range(3)]
    assert [(p["optim.lr"], p["train.epochs"]) for p in params] == [
        ("0.001", "1"),
        ("0.003", "1"),
        ("0.0", "2"),
    ]
    assert [children[i].info.status for i in range(3)] == ["FINISHED", "FINISHED", "KILLED"]
    assert [children[i].data.tags[TRIAL_STATUS_TAG] for i in range(3)] == [
        "finished",
        "finished",
        "stopped early",
    ]
    assert children[2].data.tags[STOPPED_TAG] == "median"
    assert not any(STOPPED_TAG in children[i].data.tags for i in range(2))
    assert all(ended(c) for c in children.values())
    # Stopped on its epoch-1 result. Tune's decision reaches a trial while it trains on:
    # on a fast machine its run may log epoch 2 before the stop (Tune never sees it).
    history = client.get_metric_history(children[2].info.run_id, "train/lr")
    assert [(m.step, m.value) for m in history][:1] == [(1, 0.0)] and len(history) <= 2
    with open("sweeps/median/trials.csv") as f:
        rows = {int(row["trial"]): row for row in csv.DictReader(f)}
    assert {i: (r["status"], r["epochs"]) for i, r in rows.items()} == {
        0: ("finished", "1"),
        1: ("finished", "1"),
        2: ("stopped early", "1"),
    }
