"""`vidray predict` with a model that learnt the motion dataset: it names the motion of
videos it never saw, and its timeline shows a motion that changes halfway."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from vidray.cli import run_command
from vidray.config import load_config
from vidray.data.decode import iter_frames
from vidray.data.ingest import run_ingest
from vidray.data.synthetic import write_motion_dataset, write_video
from vidray.train.driver import run_training

CLASSES = ["translate_left", "translate_right", "translate_up", "translate_down"]
FPS = 10.0


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory) -> Path:
    """A 3D CNN trained on the motion dataset (the recipe of test_temporal_modeling)."""
    root = tmp_path_factory.mktemp("predict_trained")
    videos = root / "videos"
    write_motion_dataset(videos, classes=CLASSES, videos_per_class=12, num_frames=40, seed=7)
    data = root / "data"
    ingest = [f"ingest.input={videos}", f"ingest.output={data}", "ingest.short_side=64"]
    windows = ["ingest.window_frames=16", "ingest.window_stride=8"]
    assert run_ingest(load_config(None, ingest + windows), log=lambda line: None).quarantined == 0
    recipe = [
        "model.name=simple3d",
        "model.width=16",
        "model.dropout=0.1",
        "clip.T=8",
        "clip.crop=56",
        "clip.hflip=false",  # a flip turns left into right
        "optim.lr=0.003",
        "optim.schedule=cosine",
        "train.epochs=8",
        "train.batch_size=16",
        "train.cpus_per_worker=0.5",
    ]
    places = [
        f"train.data={data}",
        f"train.storage_path={root / 'runs'}",
        f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
    ]
    return Path(run_training(load_config(None, recipe + places)).checkpoint)


def predictions(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_it_names_the_motion_of_new_videos(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Other textures, speeds and starting points than training's (another seed).
    write_motion_dataset("new", classes=CLASSES, videos_per_class=4, num_frames=40, seed=99)
    assert run_command("predict", ["--checkpoint", str(trained), "--video", "new"]) == 0
    rows = predictions(Path("predictions/new/predictions.csv"))
    assert len(rows) == 16 and all(row["status"] == "ok" for row in rows)
    right = [row["label_1"] == Path(row["video"]).parent.name for row in rows]
    assert np.mean(right) >= 0.9, rows


def test_the_timeline_shows_a_motion_that_changes_halfway(trained, tmp_path, monkeypatch):
    """4 s moving left, then 4 s of another texture moving right: the windows inside
    the first half say left, those inside the second say right."""
    monkeypatch.chdir(tmp_path)
    parts = write_motion_dataset(
        "parts",
        classes=["translate_left", "translate_right"],
        videos_per_class=1,
        num_frames=40,
        seed=5,
    )
    frames = [f for part in parts for f in iter_frames(part, fps=FPS, short_side=0)]
    write_video("changes.mp4", np.stack(frames), fps=FPS)
    args = ["--checkpoint", str(trained), "--video", "changes.mp4", "predict.stride_s=0.4"]
    assert run_command("predict", args) == 0
    timeline = predictions(Path("predictions/changes/timeline.csv"))
    halves = {"translate_left": (0.0, 4.0), "translate_right": (4.0, 8.0)}
    for motion, (start, end) in halves.items():
        inside = [
            row["label_1"]
            for row in timeline
            if float(row["start_s"]) >= start - 1e-6 and float(row["end_s"]) <= end + 1e-6
        ]
        assert len(inside) >= 5 and np.mean([label == motion for label in inside]) >= 0.8, (
            motion,
            inside,
        )
