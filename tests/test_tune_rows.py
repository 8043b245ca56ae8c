"""The trials table from a real Tune ResultGrid with a trial in each state Tune leaves
one in, and real MLflow runs: a trivial function trainable on the session's local Ray,
no training. What stopped a trial early is read from the same rows."""

from __future__ import annotations

import time

import pytest
import yaml
from PIL import Image
from ray import tune

from vidray import tracking
from vidray.config import load_config
from vidray.tune.report import TrialRow, best_so_far, plot_sweep, stopped_by, trial_rows
from vidray.tune.space import load_sweep
from vidray.tune.trial import trial_dirname

EPOCHS = 3
NEVER = {"cpu": 64}  # more than the local Ray has: the trial is created and never started


class Settled(tune.Callback):
    """The trials that have ended (finished, failed or stopped), and those that reported."""

    def __init__(self) -> None:
        self.indices: set[int] = set()
        self.reported: set[int] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.reported.add(trial.config["index"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.indices.add(trial.config["index"])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.indices.add(trial.config["index"])


class EndOnceSettled(tune.Stopper):
    """Stops trial 2 on its first result, as a scheduler stops a trial; ends the
    experiment, as the time budget does, once trials 0, 1 and 2 have ended and trial 3
    has reported: 3 is cut between two results, and 4 and 5 can never start."""

    def __init__(self, settled: Settled) -> None:
        self.settled = settled

    def __call__(self, trial_id, result) -> bool:
        return result["config"]["index"] == 2

    def stop_all(self) -> bool:
        return {0, 1, 2} <= self.settled.indices and 3 in self.settled.reported


def test_every_state_tune_leaves_a_trial_in_gives_a_row(ray_local, tmp_path):
    """Trial 2 was stopped on its first result (as ASHA stops one), trial 3 cut between
    two (as the time budget cuts one); both have runs. Trials 4 and 5 were created and
    never started: Tune gives them no config and no metrics. Trial 4 has an MLflow run
    (a trial cut before its first report), 5 none. (Those that cannot start come last:
    Tune starts trials in order and waits on the first that does not fit.) What stopped
    each is named only where it is known: a trial stopped on a result under FIFO, or
    one cut without a budget, has no name."""
    path = tmp_path / "sweep.yaml"
    space = {"clip.T": {"grid": [1, 2, 3, 4, 5, 6]}}
    path.write_text(yaml.safe_dump({"train": {"epochs": EPOCHS}, "space": space}))
    sweep = load_sweep(path)
    trials = [{"clip.T": t} for t in (1, 2, 3, 4, 5, 6)]

    # Defined here, so that Ray ships it by value: its workers cannot import tests/.
    def report_epochs(config: dict) -> None:
        """Trial 0 reports every epoch; trial 1 fails after its first report; trial 3
        reports until it is cut."""
        for epoch in range(1, (10**6 if config["index"] == 3 else EPOCHS) + 1):
            tune.report({"val/video_top1": min(epoch, EPOCHS) / 4, "epoch": epoch})
            if config["index"] == 1:
                raise RuntimeError("trial 1 broke")
            if config["index"] == 3:
                time.sleep(0.05)

    settled = Settled()
    grid = tune.Tuner(
        tune.with_resources(
            report_epochs, lambda config: NEVER if config["index"] >= 4 else {"cpu": 0.01}
        ),
        param_space={"index": tune.grid_search(list(range(6)))},
        tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name="states",
            storage_path=str(tmp_path / "runs"),
            stop=EndOnceSettled(settled),
            callbacks=[settled],
            verbose=0,
        ),
    ).fit()
    assert [r.config for r in grid if r.config is None] == [None, None]  # trials 2 and 3

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, ["mlflow.experiment=rows"])
    runs = {}
    for index, status in [
        (0, "FINISHED"),
        (1, "FAILED"),
        (2, "RUNNING"),
        (3, "RUNNING"),
        (4, "RUNNING"),
    ]:
        run_id = tracking.start_run(cfg, uri=uri, run_name=f"trial{index}")
        if status != "RUNNING":
            tracking.end_run(uri, run_id, status=status)
        runs[index] = tracking.client(uri).get_run(run_id)

    rows = {row.index: row for row in trial_rows(grid, trials, sweep, runs)}
    assert {i: (r.status, len(r.curve)) for i, r in rows.items() if i != 3} == {
        0: ("finished", 3),
        1: ("failed", 1),
        2: ("stopped early", 1),
        4: ("stopped early", 0),
        5: ("not run", 0),
    }
    assert rows[3].status == "stopped early" and len(rows[3].curve) >= 1
    assert rows[0].best == pytest.approx(0.75) and rows[0].run_id == runs[0].info.run_id
    assert rows[1].error == "RuntimeError: trial 1 broke"
    assert rows[5].run_id == "" and rows[5].best is None

    early = [2, 3, 4]
    assert [rows[i].stopped_on_result for i in early] == [True, False, False]
    stoppers = {
        (scheduler, budget): [stopped_by(rows[i], scheduler, budget) for i in early]
        for scheduler in ("asha", "fifo")
        for budget in (True, False)
    }
    assert stoppers == {
        ("asha", True): ["asha", "time_budget", "time_budget"],
        ("asha", False): ["asha", "", ""],
        ("fifo", True): ["", "time_budget", "time_budget"],
        ("fifo", False): ["", "", ""],
    }


def scored_rows() -> list[TrialRow]:
    """Trials as a searcher proposed them (by index), best first as `trial_rows` gives
    them: trial 2 failed and trial 4 was never run, so they have no result."""
    rows = [
        TrialRow(0, {"optim.lr": 0.01}, "finished", [0.2, 0.4], best=0.4),
        TrialRow(1, {"optim.lr": 0.001}, "stopped early", [0.3], best=0.3),
        TrialRow(2, {"optim.lr": 0.1}, "failed", error="boom"),
        TrialRow(3, {"optim.lr": 0.003}, "finished", [0.5, 0.7], best=0.7),
        TrialRow(4, {"optim.lr": 0.03}, "not run"),
        TrialRow(5, {"optim.lr": 0.002}, "finished", [0.6, 0.6], best=0.6),
    ]
    return sorted(rows, key=lambda r: (r.best is None, -(r.best or 0.0), r.index))


def test_the_best_so_far_follows_the_order_the_trials_were_proposed_in():
    rows = scored_rows()
    assert best_so_far(rows, "max") == [(0, 0.4), (1, 0.4), (3, 0.7), (5, 0.7)]
    assert best_so_far(rows, "min") == [(0, 0.4), (1, 0.3), (3, 0.3), (5, 0.3)]
    assert best_so_far([r for r in rows if r.best is None], "max") == []


def test_the_sweep_plot_has_a_panel_of_the_trials_over_time(tmp_path):
    """One panel for the swept key, one of the trials over time, one of the best trial
    per family: three panels in a row, written as a PNG."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"space": {"optim.lr": {"loguniform": [1e-3, 1e-1]}}}))
    png = plot_sweep(tmp_path / "sweep.png", scored_rows(), load_sweep(path))
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= 3 * height  # 4.2 inches a panel (the last 1.4x) at 3.8 inches high


def test_a_trial_the_median_rule_stopped_names_it_and_a_cut_one_the_budget():
    # Tune's last result of a trial stopped on a result says done; a cut one's does not.
    stopped = TrialRow(3, {}, "stopped early", [0.0], best=0.0, stopped_on_result=True)
    cut = TrialRow(4, {}, "stopped early", [0.0], best=0.0)
    assert [stopped_by(row, "median", True) for row in (stopped, cut)] == [
        "median",
        "time_budget",
    ]
    assert [stopped_by(row, "median", False) for row in (stopped, cut)] == ["median", ""]
