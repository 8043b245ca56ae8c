"""`vidray predict`'s core: a new video decoded as the checkpoint's data was stored and
scored as `vidray evaluate` scores a video of that data."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from untrained import save_untrained

from vidray.config import load_config
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.data.reading import iter_clip_batches
from vidray.device import Normalization, model_input
from vidray.predict.classifier import WindowScorer, load_classifier, predict_video
from vidray.train.loop import build_model

TINY = ["model.name=simple3d", "model.width=8", "clip.T=4", "clip.stride=2", "clip.crop=48"]


@pytest.fixture(scope="module")
def untrained(motion_data, tmp_path_factory):
    """(checkpoint, config, model): an untrained model saved with its data's dataset.yaml."""
    cfg = load_config(None, [*TINY, f"train.data={motion_data}"])
    info = read_dataset_info(motion_data)
    torch.manual_seed(0)
    model = build_model(cfg, len(info["classes"]))
    directory = tmp_path_factory.mktemp("predict") / "checkpoint"
    save_untrained(directory, model, cfg, info["classes"], dataset=info)
    return directory, cfg, model.eval()


@torch.no_grad()
def evaluate_probs(cfg, model, **views) -> dict[str, np.ndarray]:
    """Per video id of the val split: the mean softmax over all its clips, from the
    stored shards (what `vidray evaluate` computes)."""
    sums, counts = defaultdict(float), defaultdict(int)
    for batch in iter_clip_batches(
        cfg.train.data, split="val", clip=cfg.clip, flow_L=0, video_ids=True, **views
    ):
        ids = batch.pop("video_id")
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        probs = torch.softmax(model(model_input(tensors, "cpu", Normalization.of(cfg.clip))), 1)
        for video_id, p in zip(ids, probs.double().numpy(), strict=True):
            sums[video_id] = sums[video_id] + p
            counts[video_id] += 1
    return {v: sums[v] / counts[v] for v in sums}


@pytest.mark.parametrize("views", [(1, 1), (2, 3)])
def test_a_video_is_scored_as_evaluate_scores_it_from_the_shards(untrained, motion_data, views):
    directory, cfg, model = untrained
    temporal, spatial = views
    expected = evaluate_probs(cfg, model, temporal_views=temporal, spatial_views=spatial)
    paths = {row["video_id"]: row["path"] for row in read_manifest(motion_data)}
    scorer = WindowScorer(
        load_classifier(directory),
        device=torch.device("cpu"),
        temporal_views=temporal,
        spatial_views=spatial,
    )
    assert expected
    for video_id, probs in expected.items():
        found = predict_video(Path(paths[video_id]), scorer)
        np.testing.assert_allclose(found.probs, probs, rtol=1e-5, atol=1e-7)
        assert len(found.starts) == 2 and found.starts[1] == pytest.approx(1.6)
