"""``train.seed`` makes a run's numbers repeatable: the model's initial weights, the
clips drawn from each window, the order of shards and of the shuffle buffer all
follow from it (and the epoch), on CPU with one worker."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from test_train import tiny_config

from vidray.train.driver import run_training

CURVES = ("train/loss", "train/clip_top1", "val/loss", "val/clip_top1", "val/video_top1")


def curves(data, tmp_path, name: str, *overrides: str) -> dict[str, list[float]]:
    """Each metric's value per epoch in a one-worker run."""
    cfg = tiny_config(data, tmp_path, "train.num_workers=1", f"train.run_name={name}", *overrides)
    result = run_training(cfg)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    return {
        metric: [
            m.value
            for m in sorted(client.get_metric_history(result.run_id, metric), key=lambda m: m.step)
        ]
        for metric in CURVES
    }


@pytest.mark.slow
def test_one_seed_repeats_a_runs_numbers_and_another_changes_them(ray_local, motion_data, tmp_path):
    first = curves(motion_data, tmp_path, "first", "train.seed=7")
    again = curves(motion_data, tmp_path, "again", "train.seed=7")
    assert first == again  # exactly: every epoch, every metric
    assert len(first["train/loss"]) == 2
    # Another seed: other initial weights and other clips, from the first epoch on.
    other = curves(motion_data, tmp_path, "other", "train.seed=8", "train.epochs=1")
    assert other["train/loss"][0] != first["train/loss"][0]
    assert other["val/loss"][0] != first["val/loss"][0]
