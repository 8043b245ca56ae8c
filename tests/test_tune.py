"""Sweeps on local Ray: real Tune trials of the training pipeline, read back from MLflow.

Every sweep here reads a dataset whose source videos are deleted right after
ingest: a trial that tried to decode video (for another clip length or crop)
would fail, so the sweeps passing proves that clips come from the shards alone.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from PIL import Image

from vidray.cli import run_command
from vidray.config import Config, load_config
from vidray.data.clips import window_files
from vidray.tune.space import expand, load_sweep
from vidray.tune.sweep import BUDGET_TAG, STATE_FILE, STOPPED_TAG, run_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"name": "simple3d", "width": 8},
    "clip": {"T": 4, "stride": 2, "crop": 48, "hflip": False},
    "optim": {"name": "adamw", "lr": 0.003},
    "train": {"batch_size": 8, "num_workers": 1, "cpus_per_worker": 1},
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
    tmp_path: Path, data: Path, space: dict, sweep: dict, *, tracking: str = "", **train
) -> Path:
    shared = {
        **TINY,
        "train": {
            **TINY["train"],
            "data": str(data),
            "storage_path": str(tmp_path / "runs"),
            **train,
        },
        "mlflow": {
            "tracking_uri": tracking or f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "sweeps",
        },
    }
    path = tmp_path / "sweep.yaml"
    sweep = {"output": str(tmp_path / "out"), **sweep}
    path.write_text(yaml.safe_dump({**shared, "sweep": sweep, "space": space}, sort_keys=False))
    return path


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
    assert all(c.info.status == "FINISHED" for c in children)
    # The same names as a plain training run: every config key, the data and Ray params.
    keys = {frozenset(c.data.params) for c in children}
    assert len(keys) == 1
    (names,) = keys
    assert set(Config().flat()) <= names and {"data.windows_train", "ray.cpus"} <= names
    for child in children:
        trial = int(child.data.tags["vidray.trial"])
        overrides = expand(sweep)[trial]
        assert child.data.params["model.name"] == overrides["model.name"]
        assert child.data.params["clip.T"] == str(overrides["clip.T"])
        history = client.get_metric_history(child.info.run_id, "val/video_top1")
        assert [m.step for m in history] == [0, 1]
        row = next(r for r in result.rows if r.index == trial)
        assert row.run_id == child.info.run_id
        assert [m.value for m in history] == pytest.approx(row.curve)


@pytest.mark.slow
def test_asha_stops_a_trial_that_cannot_learn(sweep_data, tmp_path):
    """Trial 1 has a learning rate of 0 and keeps its initial weights (the same as
    trial 0's: same seed); trial 0 takes 12 AdamW steps an epoch. ASHA has rungs at
    epochs 1 and 2 and keeps the better half of 2 trials at each. After epoch 1 the
    two val losses are still close (measured 1.394 and 1.390), after epoch 2 trial 0
    is clearly lower (1.30 and 1.37 in two runs, against 1.39), so trial 1 is stopped
    by the second rung, before its third and last epoch."""
    path = write_sweep(
        tmp_path,
        sweep_data,
        {"optim.lr": {"grid": [0.003, 0.0]}},
        {
            "name": "asha",
            "metric": "val/loss",
            "mode": "min",
            "scheduler": "asha",
            "grace_period": 1,
            "reduction_factor": 2,
        },
        epochs=3,
        batch_size=2,  # 12 optimiser steps an epoch (24 training windows, 1 worker)
    )
    result = run_sweep(load_sweep(path))
    by_index = {row.index: row for row in result.rows}
    assert by_index[0].status == "finished" and len(by_index[0].curve) == 3
    assert by_index[1].status == "stopped early" and len(by_index[1].curve) < 3
    client = MlflowClient(tracking_uri=result.tracking_uri)
    stopped = client.get_run(by_index[1].run_id)
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["vidray.stopped_early"] == "asha"
    assert client.get_run(by_index[0].run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(sweep_data, tmp_path):
    """The driver (and the Ray it started) is killed once Tune has recorded trial 0
    as done; ``--resume`` then runs trial 1 only."""
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
    log = tmp_path / "first.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    experiment = tmp_path / "runs" / "resumable"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            states = list(experiment.glob("experiment_state-*.json"))
            if states and states[0].read_text().count("TERMINATED") >= 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"trial 0 never finished: {log.read_text()[-3000:]}")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its whole Ray
        driver.wait()

    state = json.loads((tmp_path / "out" / STATE_FILE).read_text())
    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 finished" in resumed.stdout, resumed.stdout[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    trials = sorted(int(c.data.tags["vidray.trial"]) for c in child_runs(client, parent))
    finished = [c for c in child_runs(client, parent) if c.info.status == "FINISHED"]
    assert trials.count(0) == 1, trials  # trial 0 was not trained again
    assert {int(c.data.tags["vidray.trial"]) for c in finished} == {0, 1}


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


@pytest.mark.slow
def test_the_time_budget_ends_a_sweep_and_says_what_it_cut(sweep_data, tmp_path):
    """Trial 0 asks for far more epochs than 8 s allow; the budget ends it and
    trial 1 never starts. Neither is reported as failed."""

    path = write_sweep(
        tmp_path,
        sweep_data,
        {"model.name": {"grid": ["simple3d", "early_fusion"]}},
        {"name": "budget", "scheduler": "fifo", "time_budget_s": 8},
        epochs=500,
    )
    t0 = time.monotonic()
    result = run_sweep(load_sweep(path))
    assert time.monotonic() - t0 < 8 + 90
    by_index = {row.index: row for row in result.rows}
    assert by_index[1].status == "not run" and not by_index[1].run_id
    assert by_index[0].status in ("stopped early", "not run")  # not run: a very slow start
    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert client.get_run(result.parent_run_id).data.tags[BUDGET_TAG] == "true"
    if by_index[0].run_id:
        run = client.get_run(by_index[0].run_id)
        assert by_index[0].status == "stopped early" and len(by_index[0].curve) < 500
        assert run.info.status == "KILLED" and run.data.tags[STOPPED_TAG] == "time_budget"
    assert (result.output / "trials.csv").exists()
