"""Epochs tied on the val metric: the checkpoint Ray keeps is the one the rule picks.

Ray Train keeps the checkpoints with the highest score and breaks ties by
recency; ranked by val accuracy alone, it deleted the earlier, lower-loss
epochs of a tie before the rule (highest metric, then lowest val loss, then
later epoch; `vidray.train.selection`) saw them.

The ties here hold by construction, whatever the weights: every video is the
same grey clip, so the model gives every val video the same prediction, and
with one val video per class exactly one of four is right (accuracy 0.25 every
epoch). The model trains on class ``a`` only, moving its prediction away from
uniform, so the val loss (the mean over the four classes) grows every epoch:
the first epoch is the best, and not one of the two latest that ties by
recency kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from vidray.checkpoints import load_checkpoint
from vidray.config import load_config
from vidray.data.ingest import run_ingest
from vidray.data.synthetic import write_video
from vidray.train.driver import run_training


@pytest.fixture(scope="module")
def tied_data(ray_local, tmp_path_factory) -> Path:
    """Eight identical grey videos in a CSV layout: four of class a to train on, one of
    each class a-d to validate on."""
    root = tmp_path_factory.mktemp("tied")
    grey = np.full((12, 32, 32, 3), 128, np.uint8)
    rows = ["path,label,split"]
    for name, label, split in [
        *[(f"t{i}", "a", "train") for i in range(4)],
        *[(f"v{c}", c, "val") for c in "abcd"],
    ]:
        write_video(root / f"{name}.mp4", grey, fps=10)
        rows.append(f"{name}.mp4,{label},{split}")
    (root / "videos.csv").write_text("\n".join(rows) + "\n")
    output = root / "data"
    cfg = load_config(
        None,
        [
            f"ingest.input={root / 'videos.csv'}",
            "ingest.layout=csv",
            f"ingest.output={output}",
            "ingest.short_side=32",
            "ingest.window_frames=8",
            "ingest.window_stride=8",
            "flow.backend=none",
        ],
    )
    assert run_ingest(cfg, log=lambda line: None).quarantined == 0
    return output


@pytest.mark.slow
def test_the_best_of_tied_epochs_is_kept_and_chosen(tied_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and mlflow.db where a user would find them
    cfg = load_config(
        None,
        [
            "model.name=c3d",  # no batch norm: eval-mode outputs follow the weights alone
            "model.width=8",
            "clip.T=4",
            "clip.crop=32",
            "optim.lr=0.001",
            "train.epochs=4",
            "train.batch_size=2",
            "train.workers=1",
            "train.run_name=tied",
            f"train.data={tied_data}",
        ],
    )
    result = run_training(cfg)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    top1, loss = (
        {m.step: m.value for m in client.get_metric_history(result.run_id, name)}
        for name in ("val/video_top1", "val/loss")
    )
    assert top1 == {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}
    assert loss[1] < loss[2] < loss[3] < loss[4]
    # Epoch 1, by the rule; ties by recency kept epochs 3 and 4 and picked 3.
    _, meta = load_checkpoint(result.checkpoint)
    assert result.metrics["epoch"] == meta["epoch"] == 1
    assert Path(result.checkpoint) == tmp_path / "runs" / "tied" / "epoch_001"
    # Ray kept two checkpoints: the best and the latest, the resume point.
    kept = sorted(p.name for p in (tmp_path / "runs" / "tied").glob("epoch_*"))
    assert kept == ["epoch_001", "epoch_004"]
    assert Path(result.last_checkpoint).name == "epoch_004"
