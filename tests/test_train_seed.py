"""``train.seed`` makes a run's numbers repeatable: the model's initial weights, the
clips drawn from each window, the order of shards and of the shuffle buffer all
follow from it and the epoch, on CPU with one worker, also when the run stops and
resumes from a checkpoint in a new driver."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from test_train import tiny_config

from vidray.train.driver import TrainResult, run_training

CURVES = ("train/loss", "train/clip_top1", "val/loss", "val/clip_top1", "val/video_top1")


def curves(data, tmp_path, name: str, *overrides: str) -> tuple[dict[str, list], TrainResult]:
    """Each metric's value per epoch in a one-worker run, and the run."""
    cfg = tiny_config(data, tmp_path, "train.workers=1", f"train.run_name={name}", *overrides)
    result = run_training(cfg)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    return {
        metric: [
            m.value
            for m in sorted(client.get_metric_history(result.run_id, metric), key=lambda m: m.step)
        ]
        for metric in CURVES
    }, result


@pytest.mark.slow
def test_one_seed_repeats_a_runs_numbers_resumed_or_not_and_another_changes_them(
    ray_local, motion_data, tmp_path
):
    whole, _ = curves(motion_data, tmp_path, "whole", "train.seed=7")
    assert len(whole["train/loss"]) == 2
    # The same seed again, stopped after epoch 1 and resumed in a new driver (a new
    # dataset, whose Ray Data executions count from 0 again): every epoch, every
    # metric exactly as the uninterrupted run's. Epoch 2 reads epoch 2's clips.
    first, stopped = curves(motion_data, tmp_path, "first", "train.seed=7", "train.epochs=1")
    second, _ = curves(
        motion_data,
        tmp_path,
        "second",
        "train.seed=7",
        f"train.resume_from={stopped.last_checkpoint}",
    )
    assert {metric: first[metric] + second[metric] for metric in CURVES} == whole
    # Another seed: other initial weights and other clips, from the first epoch on.
    other, _ = curves(motion_data, tmp_path, "other", "train.seed=8", "train.epochs=1")
    assert other["train/loss"][0] != whole["train/loss"][0]
    assert other["val/loss"][0] != whole["val/loss"][0]
