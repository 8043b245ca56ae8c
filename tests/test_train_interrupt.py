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
from commands import REPO, as_from_a_terminal
from mlflow.tracking import MlflowClient
from probe import Probe, install
from test_train import KNOBS, TINY, tiny_config

from vidray.checkpoints import load_checkpoint
from vidray.errors import Interrupted
from vidray.train.driver import interrupted, run_training
from vidray.train.schedule import lr_factor

# More epochs than either run gets through before it is stopped, however fast the machine.
EPOCHS = 20
ONE_WORKER = [f"train.epochs={EPOCHS}", "train.workers=1", "train.cpus_per_worker=1", *KNOBS]


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


def wait_for_file(path: Path, timeout: float, until: threading.Event) -> bool:
    """Whether ``path`` appeared within ``timeout`` s, unless ``until`` is set first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if until.is_set() or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


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
        command,
        cwd=tmp_path,
        env=env,
        text=True,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=as_from_a_terminal,
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
    assert f": interrupted after epoch {done}/{EPOCHS}; last checkpoint {kept}; resume with" in line
    assert Path(kept).parent == tmp_path / "runs" / "stopped"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (first,) = client.search_runs([client.get_experiment_by_name("vidray").experiment_id])
    assert first.info.status == "KILLED" and first.info.end_time is not None

    # Resumed by URI, then stopped by a job manager's SIGTERM, which the CLI turns into
    # Ctrl-C (as here), once the resumed run's first epoch is checkpointed. The worker
    # waits at the start of the next epoch, so the signal always comes while the run
    # trains: never after the fit returned (nor after the handler is restored).
    monkeypatch.chdir(tmp_path)
    resumed_dir = tmp_path / "uri_runs" / "resumed"
    cfg = tiny_config(
        motion_data,
        tmp_path,
        *ONE_WORKER,
        "train.run_name=resumed",
        f"train.resume_from=file://{kept}",
        f"train.storage_path=file://{resumed_dir.parent}",
    )
    debug = tmp_path / "probe"
    debug.mkdir()
    install(monkeypatch, Probe(dir=str(debug), pause_epoch=done + 2, pause_seconds=600))
    fit_over, sent = threading.Event(), threading.Event()

    def stop_while_paused() -> None:
        try:
            if wait_for_file(debug / "rank0.pid", timeout=300, until=fit_over):
                wait_for_checkpoint(resumed_dir, timeout=120)
                os.kill(os.getpid(), signal.SIGTERM)
                sent.set()
        finally:
            if not sent.is_set():  # let the run go on; the test fails below
                (debug / "release").touch()

    stop = threading.Thread(target=stop_while_paused)
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        stop.start()
        with pytest.raises(Interrupted) as stopped:
            run_training(cfg)
    finally:
        fit_over.set()
        stop.join(timeout=600)
        signal.signal(signal.SIGTERM, before)
    assert not stop.is_alive() and sent.is_set()
    assert signal.getsignal(signal.SIGINT) is sigint  # what it was, not Ray's
    again = resume_path(str(stopped.value))
    assert again == f"file://{resumed_dir}/epoch_{done + 1:03d}"
    runs = client.search_runs([first.info.experiment_id])
    (resumed,) = [r for r in runs if r.info.run_id != first.info.run_id]
    assert resumed.data.tags["vidray.resumed_from"] == f"file://{kept}"
    assert resumed.info.status == "KILLED" and resumed.info.end_time is not None

    # The resumed run's epochs continue the first run's count, LR schedule and steps.
    losses = history(client, resumed.info.run_id, "train/loss")
    assert list(losses) == [done + 1]
    per_epoch = int(first.data.params["data.steps_per_epoch"])
    lr = history(client, resumed.info.run_id, "train/lr")[done + 1]
    assert lr == pytest.approx(cfg.optim.lr * lr_factor(cfg.optim, done + 1 / per_epoch, EPOCHS))
    state, _ = load_checkpoint(kept)
    steps = history(client, resumed.info.run_id, "train/global_step")
    assert steps[done + 1] > state["global_step"]
    last, meta = load_checkpoint(again)
    assert again.endswith(f"epoch_{meta['epoch']:03d}")
    assert last["global_step"] == steps[meta["epoch"]]


def test_a_run_record_that_cannot_be_read_still_gives_one_line(tmp_path):
    """Storage that fails, or Ray's record of the checkpoints cut short mid-write: the
    interrupt is still one line saying where the checkpoints are, not a traceback."""
    run_dir = tmp_path / "runs" / "cut"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint_manager_snapshot.json").write_text('{"checkpoints": [')
    line = str(interrupted(str(run_dir), epochs=3, resumed_from=""))
    assert "\n" not in line
    assert line.startswith(f"interrupted; the checkpoints are under {run_dir} (its record")
    assert line.endswith("resume with train.resume_from=<the last epoch_NNN folder there>")
