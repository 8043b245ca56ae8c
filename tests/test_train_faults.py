"""Fault tolerance: a training worker killed from outside, mid-run, costs at most the
epoch in progress; Ray Train restarts the worker group from the last checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient
from probe import Probe, install
from test_train import tiny_config
from test_train_interrupt import wait_for_checkpoint

from vidray.train.driver import run_training


def wait_for(path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(
    ray_local, motion_data, tmp_path, monkeypatch
):
    debug = tmp_path / "probe"
    debug.mkdir()
    # Workers pause at the start of epoch 2 (of three) until `release` (tests/probe.py).
    install(monkeypatch, Probe(dir=str(debug), pause_epoch=2, pause_seconds=600))
    cfg = tiny_config(
        motion_data, tmp_path, "train.epochs=3", "train.max_failures=1", "train.run_name=faults"
    )
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_training(cfg)
        except BaseException as exc:  # re-raised in the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    try:
        wait_for(debug / "rank1.pid", timeout=240)
        pid = int((debug / "rank1.pid").read_text())
        # Both ranks have reported epoch 1; the kill comes once the controller registered
        # it, while the workers wait (however slow this machine is) for `release`.
        wait_for_checkpoint(tmp_path / "runs" / "faults", timeout=300)
        os.kill(pid, signal.SIGKILL)
    finally:
        (debug / "release").touch()  # the restarted workers must not pause again
    thread.join(timeout=420)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]

    client = MlflowClient(tracking_uri=result.tracking_uri)
    steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss")]
    # Epoch 1 was logged once: the restart resumed from its checkpoint, not from scratch.
    assert sorted(steps) == [1, 2, 3]
    # The best survived the restart: the rule over every epoch MLflow logged picks it.
    top1, loss = (
        {m.step: m.value for m in client.get_metric_history(result.run_id, name)}
        for name in ("val/video_top1", "val/loss")
    )
    assert result.metrics["epoch"] == max((1, 2, 3), key=lambda e: (top1[e], -loss[e], e))
    # A new worker process (its pid rewritten by the probe) ran epoch 2 again.
    assert int((debug / "rank1.pid").read_text()) != pid
