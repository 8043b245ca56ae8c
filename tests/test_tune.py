"""Sweeps on local Ray: real Tune trials of the training pipeline, read back from MLflow.

Every sweep here reads a dataset whose source videos are deleted right after
ingest: a trial that tried to decode video (for another clip length or crop)
would fail, so the sweeps passing proves that clips come from the shards alone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from commands import as_from_a_terminal, own_lines
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from PIL import Image

from vidray import tracking
from vidray.cli import run_command
from vidray.config import Config, load_config
from vidray.data.manifest import window_files
from vidray.tracking import BUDGET_TAG, STOPPED_TAG, TRIAL_TAG
from vidray.tune.space import expand, load_sweep
from vidray.tune.sweep import STATE_FILE, run_sweep

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 5  # seconds of training after the first epoch
TINY = {
    "model": {"name": "simple3d", "width": 8},
    "clip": {"T": 4, "stride": 2, "crop": 48, "hflip": False},
    "optim": {"name": "adamw", "lr": 0.003},
    "train": {"batch_size": 8, "workers": 1, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def sweep_data(ray_local, tmp_path_factory) -> Path:
    """A 4-class motion dataset whose videos no longer exist."""
    from vidray.data.ingest import run_ingest
    from vidray.data.synthetic import write_motion_dataset

    root = tmp_path_factory.mktemp("sweep_data")
    videos, output = root / "videos", root / "data"
    write_motion_dataset(videos, classes=4, videos_per_class=4, num_frames=32, seed=7)
    cfg = load_config(
        None,
        [
            f"ingest.input={videos}",
            f"ingest.output={output}",
            "ingest.short_side=64",
            "ingest.window_frames=16",
            "ingest.window_stride=16",
            "ingest.val_fraction=0.25",
            "flow.backend=none",
        ],
    )
    assert run_ingest(cfg, log=lambda line: None).ok == 16
    shutil.rmtree(videos)
    return output


def write_sweep(
    tmp_path: Path, data: Path | None, space: dict, sweep: dict, *, tracking: str = "", **train
) -> Path:
    """``tmp_path/sweep.yaml``. Without ``data`` it names no data, storage, tracking URI
    or output, as a user's file: the defaults, relative to the working directory."""
    places = {
        "train": {"data": str(data), "storage_path": str(tmp_path / "runs")},
        "mlflow": {"tracking_uri": tracking or f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "sweep": {"output": str(tmp_path / "out")},
    }
    if data is None:
        places = {"train": {}, "mlflow": {}, "sweep": {}}
    shared = {
        **TINY,
        "train": {**TINY["train"], **places["train"], **train},
        "mlflow": {**places["mlflow"], "experiment": "sweeps"},
    }
    path = tmp_path / "sweep.yaml"
    sweep = {**places["sweep"], **sweep}
    path.write_text(yaml.safe_dump({**shared, "sweep": sweep, "space": space}, sort_keys=False))
    return path


def ended(run) -> bool:
    """Whether an MLflow run has ended: a final status and an end time (the UI shows
    "(unknown)" for the end and duration of a run without one)."""
    info = run.info
    return (
        info.status != "RUNNING"
        and info.end_time is not None
        and (info.end_time >= info.start_time)
    )


def sweep_runs(name: str, db: Path = Path("mlflow.db")) -> tuple[MlflowClient, Any, dict]:
    """A sweep's MLflow client, parent run and trial runs by index, from ``db`` (by its
    absolute path: MLflow keeps one engine per URI string, so a relative one in this
    process would go on reading the first test's database)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    (parent,) = client.search_runs([experiment], f"attributes.run_name = '{name}'")
    runs = {int(c.data.tags[TRIAL_TAG]): c for c in child_runs(client, parent)}
    return client, parent, runs


def child_runs(client: MlflowClient, parent) -> list:
    return client.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )


@pytest.fixture(scope="module")
def demo_sweep(sweep_data, tmp_path_factory):
    """2 families x 2 clip lengths, 2 epochs each, two trials at a time (half a CPU
    a worker, the other core for both trials' readers), logged to an `mlflow server`
    over HTTP (the other sweeps here use the SQLite default): the sweep and its result."""
    tmp_path = tmp_path_factory.mktemp("demo_sweep")
    with mlflow_server(tmp_path) as (uri, _):
        path = write_sweep(
            tmp_path,
            sweep_data,
            {"model.name": {"grid": ["simple3d", "early_fusion"]}, "clip.T": {"grid": [4, 8]}},
            {"name": "demo", "scheduler": "fifo", "max_concurrent_trials": 2},
            tracking=uri,
            epochs=2,
            cpus_per_worker=0.5,
            register_model="demo-classifier",
        )
        sweep = load_sweep(path)
        yield sweep, run_sweep(sweep)


@pytest.mark.slow
def test_a_demo_sweep_runs_every_trial_and_ranks_them(demo_sweep):
    _, result = demo_sweep
    assert len(result.rows) == 4
    assert all(row.status == "finished" and len(row.curve) == 2 for row in result.rows)
    bests = [row.best for row in result.rows]
    assert bests == sorted(bests, reverse=True)
    rows = (result.output / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("rank,trial,status")
    assert {r.overrides["model.name"] for r in result.rows} == {"simple3d", "early_fusion"}
    with Image.open(result.output / "sweep.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


@pytest.mark.slow
def test_every_trial_logs_its_model_and_the_best_trials_alone_is_registered(demo_sweep):
    _, result = demo_sweep
    client = MlflowClient(tracking_uri=result.tracking_uri)
    for row in result.rows:
        tags = client.get_run(row.run_id).data.tags
        assert tags[tracking.MODEL_URI_TAG] == f"runs:/{row.run_id}/{tracking.MODEL_ARTIFACT}"
    (version,) = client.search_model_versions("name = 'demo-classifier'")
    assert version.version == "1" and version.run_id == result.rows[0].run_id


@pytest.mark.slow
def test_the_best_config_trains_as_is(demo_sweep):
    sweep, result = demo_sweep
    best = load_config(result.output / "best_config.yaml")
    expected = sweep.config(result.rows[0].overrides)
    assert best == expected
    assert isinstance(best, Config) and best.clip.T == result.rows[0].overrides["clip.T"]


@pytest.mark.slow
def test_one_parent_run_and_a_nested_run_per_trial_with_training_names(demo_sweep):
    sweep, result = demo_sweep
    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert result.tracking_uri.startswith("http://127.0.0.1:")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "demo"
    params = parent.data.params
    assert params["space.model.name"] == "grid(simple3d, early_fusion)"
    assert params["sweep.scheduler"] == "fifo" and params["sweep.trials"] == "4"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "sweep.png", "best_config.yaml"} <= artifacts
    assert parent.data.metrics["best/val/video_top1"] == pytest.approx(result.rows[0].best)

    children = child_runs(client, parent)
    assert len(children) == 4
    assert all(c.info.status == "FINISHED" and ended(c) for c in children)
    # The same names as a plain training run: the run's config keys, the data and Ray params.
    keys = {frozenset(c.data.params) for c in children}
    assert len(keys) == 1
    (names,) = keys
    assert set(tracking.run_params(Config())) <= names
    assert {"data.windows_train", "data.fps", "ray.cpus"} <= names
    for child in children:
        trial = int(child.data.tags["vidray.trial"])
        overrides = expand(sweep)[trial]
        assert child.data.params["model.name"] == overrides["model.name"]
        assert child.data.params["clip.T"] == str(overrides["clip.T"])
        history = client.get_metric_history(child.info.run_id, "val/video_top1")
        assert [m.step for m in history] == [1, 2]
        row = next(r for r in result.rows if r.index == trial)
        assert row.run_id == child.info.run_id
        assert [m.value for m in history] == pytest.approx(row.curve)


@pytest.mark.slow
def test_asha_stops_a_trial_ranked_low_at_its_rung_and_lets_one_at_its_last_epoch_end(
    sweep_data, tmp_path, monkeypatch, capsys
):
    """As a user types it, in a fresh working directory: ``vidray tune --data data``
    (relative), the default tracking URI (sqlite:///mlflow.db) and storage (runs/).

    ASHA ranks the trials by ``train/lr`` here, so that their order at the rung is
    known before they run: a learning curve of 3 epochs on 24 windows is not (trial 0's
    val loss after 2 epochs was 1.21, 1.30, and above the untrained 1.39 in three runs).
    Trial 0 has lr 0.003, trials 1 and 2 lr 0; they run one at a time, in order. ASHA
    has one rung, at epoch 2 (grace period 2, 3 epochs at most), and keeps the better
    half of the trials there. Trial 1 has 2 epochs: the rung is its last epoch, and it
    finishes (ASHA's stop there killed it while it logged its checkpoint, leaving its
    run RUNNING with no end time). ASHA stops trial 2 before its third and last epoch."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    write_sweep(
        tmp_path,
        None,
        {
            "optim.lr": {"grid": [0.003, 0.0]},
            "train.epochs": {"grid": [2, 3], "when": {"optim.lr": [0.0]}},
        },
        {
            "name": "asha",
            "metric": "train/lr",
            "mode": "max",
            "scheduler": "asha",
            "grace_period": 2,
            "reduction_factor": 2,
            "max_concurrent_trials": 1,
        },
        epochs=3,
    )
    assert run_command("tune", ["--config", "sweep.yaml", "--data", "data"]) == 0
    db = tmp_path.resolve() / "mlflow.db"
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in capsys.readouterr().out
    client, _, children = sweep_runs("asha")
    assert sorted(children) == [0, 1, 2]
    params = [children[i].data.params for i in range(3)]
    assert [(p["optim.lr"], p["train.epochs"]) for p in params] == [
        ("0.003", "3"),
        ("0.0", "2"),
        ("0.0", "3"),
    ]
    assert {c.data.params["train.data"] for c in children.values()} == {
        str(tmp_path.resolve() / "data")
    }
    assert [children[i].info.status for i in range(3)] == ["FINISHED", "FINISHED", "KILLED"]
    assert children[2].data.tags[STOPPED_TAG] == "asha"
    assert all(ended(c) for c in children.values())
    artifacts = {a.path for a in client.list_artifacts(children[1].info.run_id)}
    assert {"checkpoint", "config.yaml"} <= artifacts
    with open("sweeps/asha/trials.csv") as f:
        rows = {int(row["trial"]): row for row in csv.DictReader(f)}
    assert {i: (r["status"], r["epochs"]) for i, r in rows.items()} == {
        0: ("finished", "3"),
        1: ("finished", "2"),
        2: ("stopped early", "2"),
    }
    assert [p.resolve() for p in tmp_path.rglob("mlflow.db")] == [db]


def stop_when(command: list[str], env: dict, log: Path, ready, signum: int) -> int:
    """Run ``command`` in a session of its own until ``ready()``, then send ``signum`` to
    the whole session (the driver and the Ray it started), as a terminal sends Ctrl-C
    to its foreground jobs; the driver's exit status. Its stderr goes to ``log.err``."""
    with log.open("w") as out, log.with_suffix(".err").open("w") as err:
        driver = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
            preexec_fn=as_from_a_terminal,
        )
    deadline = time.monotonic() + 240
    try:
        while not ready():
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{ready.__doc__} never happened: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        os.killpg(driver.pid, signum)
        return driver.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # whatever of its Ray is left
        driver.wait()


@pytest.mark.slow
def test_a_killed_or_interrupted_sweep_resumes_without_rerunning_finished_trials(
    sweep_data, tmp_path
):
    """One sweep of two 1-epoch trials, stopped as jobs are stopped: (1) the driver and
    its whole Ray are killed (SIGKILL) once Tune has recorded trial 0 as done; (2)
    ``--resume``, then Ctrl-C once trial 1 trains again: one line, exit 130, every run
    ended as KILLED; (3) ``--resume`` runs trial 1 to its end, never trial 0 again."""
    path = write_sweep(
        tmp_path,
        sweep_data,
        {"model.name": {"grid": ["simple3d", "early_fusion"]}},
        {"name": "resumable", "scheduler": "fifo"},
        epochs=1,
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "pipelines.tune", "--config", str(path), "ray.num_cpus=2"]
    experiment = tmp_path / "runs" / "resumable"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    def trial_0_recorded_done() -> bool:
        """Tune recording trial 0 as done"""
        states = list(experiment.glob("experiment_state-*.json"))
        return bool(states) and states[0].read_text().count("TERMINATED") >= 1

    killed = stop_when(command, env, tmp_path / "1.log", trial_0_recorded_done, signal.SIGKILL)
    assert killed == -signal.SIGKILL
    parent_id = json.loads((tmp_path / "out" / STATE_FILE).read_text())["parent_run_id"]

    def runs() -> list:
        return child_runs(client, client.get_run(parent_id))

    resumed_at = time.time() * 1000

    def trial_1_trains_again() -> bool:
        """trial 1 starting its run again"""
        return any(r.data.tags[TRIAL_TAG] == "1" and r.info.start_time > resumed_at for r in runs())

    resume = [*command, "--resume"]
    code = stop_when(resume, env, tmp_path / "2.log", trial_1_trains_again, signal.SIGINT)
    said = own_lines((tmp_path / "2.err").read_text())[-1]  # not a Ray worker's dying words
    assert code == 130, said
    assert said == (
        "python -m pipelines.tune: interrupted: 1 of 2 trials finished; to continue, run "
        f"the same command with --resume (--config {path} ray.num_cpus=2 --resume)"
    )
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and ended(parent)
    by_trial = sorted((r.data.tags[TRIAL_TAG], r.info.status) for r in runs())
    # Trial 1 has a run from (2), and one from (1) where it got that far before the kill.
    assert by_trial[0] == ("0", "FINISHED") and set(by_trial[1:]) == {("1", "KILLED")}
    assert all(ended(r) for r in runs())

    finished = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "2 finished" in finished.stdout, finished.stdout[-2000:]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and ended(parent)
    trials = sorted(int(r.data.tags[TRIAL_TAG]) for r in runs())
    assert trials.count(0) == 1, trials  # trial 0 was not trained again
    assert {int(r.data.tags[TRIAL_TAG]) for r in runs() if r.info.status == "FINISHED"} == {
        0,
        1,
    }
    assert all(ended(r) for r in runs())


def test_a_sweep_that_exists_needs_resume_and_resume_needs_a_sweep(sweep_data, tmp_path):
    from vidray.errors import VidrayError

    path = write_sweep(
        tmp_path, sweep_data, {"clip.T": {"grid": [4]}}, {"name": "once", "resume": True}
    )
    with pytest.raises(VidrayError, match=r"sweep 'once' has nothing to resume"):
        run_sweep(load_sweep(path))
    (tmp_path / "runs" / "once").mkdir(parents=True)
    with pytest.raises(VidrayError, match=r"sweep 'once' exists .*pass --resume"):
        run_sweep(load_sweep(path, ["sweep.resume=false"]))


@pytest.mark.slow
def test_a_failed_trial_is_reported_and_the_sweep_exits_2_after_writing_everything(
    sweep_data, tmp_path, capsys
):
    """Trial 1 reads a copy of the data with a damaged val shard: it fails at its
    first validation, trial 0 finishes, and the sweep still writes its table."""

    damaged = tmp_path / "damaged"
    shutil.copytree(sweep_data, damaged)
    shard = Path(window_files(damaged, split="val")[0])
    shard.write_bytes(b"not parquet")
    path = write_sweep(
        tmp_path,
        sweep_data,
        {"train.data": {"grid": [str(sweep_data), str(damaged)]}},
        {"name": "broken", "scheduler": "fifo"},
        epochs=1,
        max_failures=0,
    )
    code = run_command("tune", ["--config", str(path)])
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert code == 2
    assert len(errors) == 1 and "1 of 2 trials failed (trial 1: damaged window shard" in errors[0]
    with (tmp_path / "out" / "trials.csv").open() as f:
        rows = {row["trial"]: row for row in csv.DictReader(f)}
    assert sorted(row["status"] for row in rows.values()) == ["failed", "finished"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.search_runs(
        experiment_ids=[client.get_experiment_by_name("sweeps").experiment_id],
        filter_string="attributes.run_name = 'broken'",
    )[0]
    assert parent.info.status == "FAILED"
    assert {"trials.csv", "sweep.png", "best_config.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children = {c.data.tags["vidray.trial"]: c for c in child_runs(client, parent)}
    assert {t: c.info.status for t, c in children.items()} == {"0": "FINISHED", "1": "FAILED"}
    assert all(ended(c) for c in children.values())


@pytest.mark.slow
def test_the_time_budget_ends_a_sweep_and_says_what_it_cut(sweep_data, tmp_path, capsys):
    """Trial 0 asks for 500 epochs; the budget ends it while it trains, and trial 1
    never starts. Neither is reported as failed; the sweep writes its table and ends.

    The budget counts from trial 0's first reported epoch, so trial 0 has a run and
    an epoch in it however long its start took on this machine."""
    path = write_sweep(
        tmp_path,
        sweep_data,
        {"model.name": {"grid": ["simple3d", "early_fusion"]}},
        {"name": "budget", "scheduler": "fifo", "time_budget_s": BUDGET_S},
        epochs=500,
    )
    result = run_sweep(load_sweep(path))
    assert f"time budget of {BUDGET_S} s reached: 2 of 2 trials" in capsys.readouterr().out
    by_index = {row.index: row for row in result.rows}
    assert by_index[1].status == "not run" and not by_index[1].run_id
    assert by_index[0].status == "stopped early"
    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[BUDGET_TAG] == "true"
    (child,) = child_runs(client, parent)
    assert child.info.run_id == by_index[0].run_id and ended(child)
    assert child.info.status == "KILLED" and child.data.tags[STOPPED_TAG] == "time_budget"
    history = client.get_metric_history(child.info.run_id, "val/video_top1")
    with (result.output / "trials.csv").open() as f:
        rows = {int(row["trial"]): row for row in csv.DictReader(f)}
    assert rows[0]["status"] == "stopped early" and int(rows[0]["epochs"]) <= len(history)
    assert rows[1]["status"] == "not run"
