"""The trials table from a real Tune ResultGrid with a trial in each state Tune leaves
one in, and real MLflow runs: a trivial function trainable on the session's local Ray,
no training."""

from __future__ import annotations

import pytest
import yaml
from ray import tune

from vidray import tracking
from vidray.config import load_config
from vidray.tune.report import trial_dirname, trial_rows
from vidray.tune.space import load_sweep

EPOCHS = 3
NEVER = {"cpu": 64}  # more than the local Ray has: the trial is created and never started


class Settled(tune.Callback):
    """The trials that have ended, finished or failed."""

    def __init__(self) -> None:
        self.indices: set[int] = set()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.indices.add(trial.config["index"])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.indices.add(trial.config["index"])


class EndOnceSettled(tune.Stopper):
    """Ends the experiment once trials 0 and 1 have ended: 2 and 3 can never start."""

    def __init__(self, settled: Settled) -> None:
        self.settled = settled

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return {0, 1} <= self.settled.indices


def test_every_state_tune_leaves_a_trial_in_gives_a_row(ray_local, tmp_path):
    """Trials 2 and 3 were created and never started: Tune gives them no config and
    no metrics. Trial 2 has an MLflow run (a trial cut before its first report), 3 none."""
    path = tmp_path / "sweep.yaml"
    space = {"clip.T": {"grid": [1, 2, 3, 4]}}
    path.write_text(yaml.safe_dump({"train": {"epochs": EPOCHS}, "space": space}))
    sweep = load_sweep(path)
    trials = [{"clip.T": t} for t in (1, 2, 3, 4)]

    # Defined here, so that Ray ships it by value: its workers cannot import tests/.
    def report_epochs(config: dict) -> None:
        """Trial 0 reports every epoch; trial 1 fails after its first report."""
        for epoch in range(1, EPOCHS + 1):
            tune.report({"val/video_top1": epoch / 4, "epoch": epoch})
            if config["index"] == 1:
                raise RuntimeError("trial 1 broke")

    settled = Settled()
    grid = tune.Tuner(
        tune.with_resources(
            report_epochs, lambda config: NEVER if config["index"] >= 2 else {"cpu": 0.01}
        ),
        param_space={"index": tune.grid_search([0, 1, 2, 3])},
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
    for index, status in [(0, "FINISHED"), (1, "FAILED"), (2, "RUNNING")]:
        run_id = tracking.start_run(cfg, uri=uri, run_name=f"trial{index}")
        if status != "RUNNING":
            tracking.end_run(uri, run_id, status=status)
        runs[index] = tracking.client(uri).get_run(run_id)

    rows = trial_rows(grid, trials, sweep, runs)
    assert [(r.index, r.status, len(r.curve)) for r in rows] == [
        (0, "finished", 3),
        (1, "failed", 1),
        (2, "stopped early", 0),
        (3, "not run", 0),
    ]
    assert rows[0].best == pytest.approx(0.75) and rows[0].run_id == runs[0].info.run_id
    assert rows[1].error == "RuntimeError: trial 1 broke"
    assert rows[3].run_id == "" and rows[3].best is None
