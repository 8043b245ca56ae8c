"""Stopping a training run and resuming it.

Ctrl-C in a terminal or SIGTERM from a job manager: either way the run's
checkpoints stay, its MLflow run ends KILLED, and one line names the
checkpoint to resume from. Resuming from it (here by a ``file://`` URI, the
path ``s3://`` and ``gs://`` take too) continues the epoch count, the LR
schedule and the step count where the first run stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from commands import REPO
from mlflow.tracking import MlflowClient
from test_train import KNOBS, TINY, tiny_config

from vidray.errors import Interrupted
from vidray.train.checkpoints import load_checkpoint
from vidray.train.driver import run_training
from vidray.train.schedule import lr_factor

ONE_WORKER = ["train.epochs=6", "train.num_workers=1", "train.cpus_per_worker=1", *KNOBS]


def wait_for_checkpoint(run_dir: Path, timeout: float) -> None:
    """Until Ray has registered a checkpoint in ``run_dir`` (what the driver names
    after an interrupt)."""
    from ray.train import Result

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Result.from_path(run_dir).checkpoint is not None:
                return
        except Exception:  # no run yet, or its record half written: look again
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no checkpoint in {run_dir} after {timeout} s")


def resume_path(line: str) -> str:
    found = re.search(r"resume with train\.resume_from=(\S+)$", line)
    assert found, line
    return found.group(1)


def history(client: MlflowClient, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, metric)}


@pytest.mark.slow
def test_ctrl_c_then_sigterm_keep_the_checkpoints_and_resuming_continues(
    ray_local, motion_data, tmp_path, monkeypatch
):
    # Ctrl-C in a terminal: SIGINT to the process group of `python -m pipelines.train`,
    # typed in a fresh directory with a relative --data and the default MLflow store.
    command = [
        sys.executable,
        "-m",
        "pipelines.train",
        "--data",
        os.path.relpath(motion_data, tmp_path),
        *TINY,
        *ONE_WORKER,
        "train.run_name=stopped",
        "ray.num_cpus=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    train = subprocess.Popen(
        command, cwd=tmp_path, env=env, text=True, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_for_checkpoint(tmp_path / "runs" / "stopped", timeout=300)
        os.killpg(train.pid, signal.SIGINT)
        _, stderr = train.communicate(timeout=120)
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
    assert train.returncode == 130, stderr[-3000:]
    (line,) = [s for s in stderr.splitlines() if s.startswith("python -m pipelines.train: ")]
    kept = resume_path(line)
    done = int(Path(kept).name.removeprefix("epoch_"))
    assert f": interrupted after epoch {done}/6; last checkpoint {kept}; resume with" in line
    assert Path(kept).parent == tmp_path / "runs" / "stopped" and done < 6
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (first,) = client.search_runs([client.get_experiment_by_name("vidray").experiment_id])
    assert first.info.status == "KILLED" and first.info.end_time is not None

    # Resumed by URI, then stopped by a job manager's SIGTERM, which the CLI turns into
    # Ctrl-C (as here), after the resumed run's first checkpoint.
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(
        motion_data,
        tmp_path,
        *ONE_WORKER,
        "train.run_name=resumed",
        f"train.resume_from=file://{kept}",
        f"train.storage_path=file://{tmp_path / 'uri_runs'}",
    )
    stop = threading.Thread(
        target=lambda: (
            wait_for_checkpoint(tmp_path / "uri_runs" / "resumed", timeout=300),
            os.kill(os.getpid(), signal.SIGTERM),
        ),
        daemon=True,
    )
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stop.start()
        with pytest.raises(Interrupted) as stopped:
            run_training(cfg)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not Ray's
    again = resume_path(str(stopped.value))
    assert again.startswith(f"file://{tmp_path / 'uri_runs' / 'resumed'}/epoch_")
    runs = client.search_runs([first.info.experiment_id])
    (resumed,) = [r for r in runs if r.info.run_id != first.info.run_id]
    assert resumed.data.tags["vidray.resumed_from"] == f"file://{kept}"
    assert resumed.info.status == "KILLED" and resumed.info.end_time is not None

    # The resumed run's epochs continue the first run's count, LR schedule and steps.
    losses = history(client, resumed.info.run_id, "train/loss")
    assert min(losses) == done + 1
    per_epoch = int(first.data.params["data.steps_per_epoch"])
    lr = history(client, resumed.info.run_id, "train/lr")[done + 1]
    assert lr == pytest.approx(cfg.optim.lr * lr_factor(cfg.optim, done + 1 / per_epoch, 6))
    state, _ = load_checkpoint(kept)
    steps = history(client, resumed.info.run_id, "train/global_step")
    assert steps[done + 1] > state["global_step"]
    last, meta = load_checkpoint(again)
    assert again.endswith(f"epoch_{meta['epoch']:03d}")
    assert last["global_step"] == steps[meta["epoch"]]
