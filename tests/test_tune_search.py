"""Searchers (sweep.search: optuna | hyperopt) and random search, without a cluster:
proposals follow the results, conditional keys are drawn only where they apply, and
a resumed searcher goes on where it stopped."""

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
import yaml
from mlflow.tracking import MlflowClient
from test_tune import (
    REPO,
    child_runs,
    stop_when,
    sweep_data,  # noqa: F401  (a fixture of these tests)
    sweep_runs,
    write_sweep,
)

from vidray.cli import run_command
from vidray.config import Config
from vidray.errors import VidrayError
from vidray.tracking import TRIAL_TAG
from vidray.tune.report import refused_trials
from vidray.tune.search import make_searcher
from vidray.tune.space import expand, load_sweep
from vidray.tune.sweep import STATE_FILE

SPACE = {
    "model.name": {"choice": ["simple3d", "slow_fusion"]},
    "optim.lr": {"loguniform": [1.0e-4, 1.0e-1]},
    # slow_fusion's only: a key whose condition is another key's value
    "optim.weight_decay": {"uniform": [0.0, 0.1], "when": {"model.name": ["slow_fusion"]}},
    "model.depth": {"choice": [10, 18]},  # no family of this space takes it: never drawn
}


def sweep_file(tmp_path: Path, space: dict, **sweep) -> Path:
    path = tmp_path / "sweep.yaml"
    settings = {"metric": "train/lr", "mode": "max", **sweep}
    path.write_text(yaml.safe_dump({"sweep": settings, "space": space}))
    return path


def searcher(sweep, tmp_path: Path, refusal=lambda overrides: None):
    return make_searcher(sweep, refusal=refusal, record=tmp_path / "refused.jsonl")


def propose(searcher, count: int, reward) -> list[dict]:
    """``count`` proposals, each told its result (``reward(overrides)``) before the next."""
    searcher.set_search_properties("train/lr", "max", {})
    proposals = []
    for n in range(count):
        trial = searcher.suggest(f"t{n}")
        proposals.append(trial)
        result = {"train/lr": reward(trial["overrides"]), "training_iteration": 1}
        searcher.on_trial_complete(f"t{n}", result=result)
    return proposals


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_proposals_after_the_random_starts_follow_the_results(tmp_path, search):
    """The same seed and two opposite results: the random starts are the same, the
    proposals after them differ and lean toward what was rewarded."""
    sweep = load_sweep(sweep_file(tmp_path, SPACE, search=search, random_starts=4, seed=3))

    def large(o: dict) -> float:
        return math.log10(o["optim.lr"])

    def small(o: dict) -> float:
        return -math.log10(o["optim.lr"])

    toward_large = propose(searcher(sweep, tmp_path), 14, large)
    toward_small = propose(searcher(sweep, tmp_path), 14, small)
    assert [p["index"] for p in toward_large] == list(range(14))
    assert toward_large[:4] == toward_small[:4]  # drawn before any result counts
    assert toward_large[4:] != toward_small[4:]

    def mean_log_lr(proposals: list[dict]) -> float:
        return sum(math.log10(p["overrides"]["optim.lr"]) for p in proposals) / len(proposals)

    assert mean_log_lr(toward_large[4:]) > mean_log_lr(toward_small[4:])
    for proposal in toward_large + toward_small:
        overrides = proposal["overrides"]
        assert ("optim.weight_decay" in overrides) == (overrides["model.name"] == "slow_fusion")
        assert "model.depth" not in overrides
        assert set(overrides) <= set(SPACE)
        assert all(type(v) in (str, int, float) for v in overrides.values())


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_a_restored_searcher_goes_on_numbering_and_proposing(tmp_path, search):
    """Saved and restored as Tune does for --resume (the search generator, its wrappers'
    states and the searcher itself): the next proposal is the one the first would make."""
    from ray.tune.search import SearchGenerator

    sweep = load_sweep(sweep_file(tmp_path, SPACE, search=search, random_starts=2))

    def reward(o: dict) -> float:
        return o["optim.lr"]

    first = searcher(sweep, tmp_path)
    propose(first, 3, reward)
    SearchGenerator(first).save_to_dir(str(tmp_path), session_str="s")
    expected = first.suggest("t3")
    restored = searcher(sweep, tmp_path)
    SearchGenerator(restored).restore_from_dir(str(tmp_path))
    assert restored.suggest("t3") == expected
    assert expected["index"] == 3


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_a_proposal_train_refuses_is_recorded_told_as_a_failure_and_replaced(tmp_path, search):
    space = {**SPACE, "clip.T": {"choice": [4, 32]}}
    sweep = load_sweep(sweep_file(tmp_path, space, search=search, random_starts=3))

    def refusal(overrides: dict) -> str | None:
        return "clip too long" if overrides["clip.T"] == 32 else None

    proposals = propose(searcher(sweep, tmp_path, refusal), 8, lambda o: o["optim.lr"])
    refused = refused_trials(tmp_path / "refused.jsonl")
    assert refused and all(r["overrides"]["clip.T"] == 32 for r in refused)
    assert {r["reason"] for r in refused} == {"clip too long"}
    assert all(p["overrides"]["clip.T"] == 4 for p in proposals)
    indices = sorted([p["index"] for p in proposals] + [r["index"] for r in refused])
    assert indices == list(range(8 + len(refused)))  # one numbering, no gaps


def test_hyperopt_needs_a_list_of_values_for_a_key_others_depend_on(tmp_path):
    space = {
        "optim.lr": {"uniform": [0.001, 0.01]},
        "optim.weight_decay": {"uniform": [0.0, 0.1], "when": {"optim.lr": [0.001]}},
    }
    with pytest.raises(VidrayError, match=r"space\.optim\.lr: under sweep\.search=hyperopt"):
        load_sweep(sweep_file(tmp_path, space, search="hyperopt"))
    load_sweep(sweep_file(tmp_path, space, search="optuna"))  # define-by-run: any key


def test_random_search_draws_grid_keys_too_and_gives_num_samples_trials(tmp_path):
    space = {
        "model.name": {"grid": ["simple3d", "slow_fusion"]},
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "optim.weight_decay": {"uniform": [0.0, 0.1], "when": {"model.name": ["slow_fusion"]}},
    }
    trials = expand(load_sweep(sweep_file(tmp_path, space, search="random", num_samples=12)))
    assert len(trials) == 12
    assert {t["model.name"] for t in trials} == {"simple3d", "slow_fusion"}
    assert all(("optim.weight_decay" in t) == (t["model.name"] == "slow_fusion") for t in trials)
    assert len({t["optim.lr"] for t in trials}) == 12
    grid = expand(load_sweep(sweep_file(tmp_path, space, search="grid", num_samples=3)))
    assert [t["model.name"] for t in grid] == ["simple3d"] * 3 + ["slow_fusion"] * 3


def drawn_runs(tmp_path: Path, name: str) -> tuple[dict[int, dict], dict[int, object]]:
    """trials.csv's rows and the trials' MLflow runs, by trial index."""
    with open(tmp_path / "sweeps" / name / "trials.csv") as f:
        rows = {int(row["trial"]): row for row in csv.DictReader(f)}
    _, _, runs = sweep_runs(name)
    return rows, runs


@pytest.mark.slow
def test_an_optuna_sweep_runs_the_trials_it_proposes_and_skips_the_ones_train_refuses(
    sweep_data,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
    capsys,
):
    """``vidray tune`` as typed in a fresh folder: optuna proposes 6 trials over a
    log-uniform lr, a choice of model, a knob only single_frame has, a key whose `when`
    names it, and a clip length of which 32 frames does not fit the stored 16-frame
    windows. A proposal that `vidray train` refuses is not started but reported with its
    reason, and the sweep goes on to 6 trials that run; every trial that ran
    logged exactly the values drawn for it (ranked by train/lr, so the searcher's
    proposals do not depend on how fast anything learns)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    space = {
        "model.name": {"choice": ["simple3d", "single_frame"]},
        "model.depth": {"choice": [18, 34]},  # single_frame's knob: simple3d has none
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "optim.weight_decay": {"uniform": [0.0, 0.1], "when": {"model.name": ["single_frame"]}},
        "clip.T": {"choice": [4, 32]},
    }
    settings = {"name": "opt", "metric": "train/lr", "mode": "max", "scheduler": "fifo"}
    # Seed 2 draws simple3d twice, then single_frame, and refuses 2 proposals on the way;
    # two trials at a time (half a CPU each for the workers, the rest for the readers).
    settings |= {"search": "optuna", "num_samples": 6, "random_starts": 3, "seed": 2}
    settings |= {"max_concurrent_trials": 2}
    write_sweep(tmp_path, None, space, settings, epochs=1, cpus_per_worker=0.5)
    assert run_command("tune", ["--config", "sweep.yaml", "--data", "data"]) == 0
    out = capsys.readouterr().out
    assert "tune: 6 trials proposed by optuna, scheduler fifo" in out
    rows, runs = drawn_runs(tmp_path, "opt")
    refused = {i for i, r in rows.items() if r["status"] == "invalid"}
    assert sorted(rows) == list(range(6 + len(refused)))  # one numbering
    assert refused == {i for i, r in rows.items() if r["clip.T"] == "32"} and refused
    for i in refused:
        assert "clip.T" in rows[i]["error"] and i not in runs
    assert sorted(runs) == sorted(set(rows) - refused) and len(runs) == 6
    shared = Config().flat()
    for i, run in runs.items():
        row, params = rows[i], run.data.params
        assert rows[i]["status"] == "finished" and run.info.status == "FINISHED"
        assert params["optim.lr"] == row["optim.lr"] and params["model.name"] == row["model.name"]
        assert params["clip.T"] == row["clip.T"] == "4"
        if row["model.name"] == "single_frame":
            assert params["optim.weight_decay"] == row["optim.weight_decay"] != ""
            assert params["model.depth"] == row["model.depth"] != ""
        else:  # neither drawn nor logged as drawn: the shared config's values
            assert row["optim.weight_decay"] == row["model.depth"] == ""
            assert float(params["optim.weight_decay"]) == shared["optim.weight_decay"]
            assert params.get("model.depth", "None") == str(shared["model.depth"])
    assert len({r["optim.lr"] for r in rows.values()}) == len(rows)
    assert list((tmp_path / "runs" / "opt").glob("searcher-state-*.pkl"))  # what --resume reads


@pytest.mark.slow
def test_a_hyperopt_sweep_logs_the_values_it_drew(
    sweep_data,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    space = {
        "model.name": {"choice": ["simple3d", "single_frame"]},
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "optim.weight_decay": {"uniform": [0.0, 0.1], "when": {"model.name": ["single_frame"]}},
    }
    settings = {"name": "hyp", "metric": "train/lr", "mode": "max", "scheduler": "fifo"}
    settings |= {"search": "hyperopt", "num_samples": 3, "random_starts": 2}
    settings |= {"max_concurrent_trials": 2}
    write_sweep(tmp_path, None, space, settings, epochs=1, cpus_per_worker=0.5)
    assert run_command("tune", ["--config", "sweep.yaml", "--data", "data"]) == 0
    rows, runs = drawn_runs(tmp_path, "hyp")
    assert sorted(rows) == sorted(runs) == [0, 1, 2]
    for i, run in runs.items():
        assert rows[i]["status"] == "finished"
        for key in ("model.name", "optim.lr"):
            assert run.data.params[key] == rows[i][key]
        drawn = rows[i]["optim.weight_decay"]
        assert (drawn != "") == (rows[i]["model.name"] == "single_frame")
        if drawn:
            assert run.data.params["optim.weight_decay"] == drawn


@pytest.mark.slow
def test_a_killed_optuna_sweep_resumes_with_its_searcher_and_goes_on_numbering(
    sweep_data,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
    """The driver and its Ray are killed once Tune recorded trial 0 done; ``--resume``
    restores the searcher (its history and its count) and runs the other trial: trial
    0 is not trained again, and the trials are numbered 0 and 1."""
    space = {"optim.lr": {"loguniform": [1.0e-4, 1.0e-1]}}
    settings = {"name": "again", "metric": "train/lr", "mode": "max", "scheduler": "fifo"}
    settings |= {"search": "optuna", "num_samples": 2, "random_starts": 1}
    path = write_sweep(tmp_path, sweep_data, space, settings, epochs=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "pipelines.tune", "--config", str(path), "ray.num_cpus=2"]
    experiment = tmp_path / "runs" / "again"

    def trial_0_recorded_done() -> bool:
        """Tune recording trial 0 as done"""
        states = list(experiment.glob("experiment_state-*.json"))
        return bool(states) and states[0].read_text().count("TERMINATED") >= 1

    killed = stop_when(command, env, tmp_path / "1.log", trial_0_recorded_done, signal.SIGKILL)
    assert killed == -signal.SIGKILL
    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 trials: 2 finished" in resumed.stdout, resumed.stdout[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = json.loads((tmp_path / "out" / STATE_FILE).read_text())["parent_run_id"]
    runs = child_runs(client, client.get_run(parent_id))
    finished = sorted(int(r.data.tags[TRIAL_TAG]) for r in runs if r.info.status == "FINISHED")
    assert finished == [0, 1]  # trial 0 once: not trained again
    with open(tmp_path / "out" / "trials.csv") as f:
        rows = {int(row["trial"]): row for row in csv.DictReader(f)}
    assert sorted(rows) == [0, 1] and rows[0]["optim.lr"] != rows[1]["optim.lr"]
    assert sorted(experiment.glob("trial*")) == [experiment / f"trial{i:03d}" for i in range(2)]
