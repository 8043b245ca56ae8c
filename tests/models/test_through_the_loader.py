"""Every registered family trains on the clips the loader derives for it.

The loader builds each model the clip its InputSpec declares (T frames, or one
RGB frame plus L flow fields); here every family, at a small width where it has
one, takes a batch of real ingested windows and does a forward and backward pass,
laid out as the training loop lays it out. MViT reads 16 x 224^2 clips only and S3D
nothing smaller than 13 x 209^2: they train one full-size clip, from the same videos
stored at short side 224.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidray.config import Config, load_config
from vidray.data.ingest import run_ingest
from vidray.data.reading import iter_clip_batches
from vidray.data.synthetic import write_motion_dataset
from vidray.device import Normalization, channels_last, to_device
from vidray.models import arguments, available, entry
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model

# Stored windows are 16 frames of short side 64 (conftest's motion_data).
CLIP_FOR = {
    "slow_fusion": ["clip.T=10", "clip.stride=1"],
    "slowfast_r50": ["clip.T=16", "clip.stride=1"],
}
# Families that take no clip small enough for motion_data: clips of their declared size
# (16 x 224^2) from motion_data_224, this many a batch. S3D takes two: for a batch of one,
# PyTorch's CPU convolution gives the 1x1x1 kernels on its 2x7x7 maps gradients in the
# contiguous layout, whatever the weight's (two clips take the channels-last path).
FULL_SIZE = {"mvit_v1_b": 1, "mvit_v2_s": 1, "s3d": 2}


@pytest.fixture(scope="module")
def motion_data_224(ray_local, tmp_path_factory) -> Path:
    """A few motion videos stored at short side 224 (upscaled from 72), without flow: two
    16-frame windows a video, so that a shard gives batches of two."""
    videos = tmp_path_factory.mktemp("motion_224") / "videos"
    write_motion_dataset(videos, classes=2, videos_per_class=3, num_frames=32, seed=1)
    output = tmp_path_factory.mktemp("motion_data_224")
    settings = ["short_side=224", "max_upscale=0", "window_frames=16", "window_stride=16"]
    cfg = load_config(
        None,
        [f"ingest.input={videos}", f"ingest.output={output}", "flow.backend=none"]
        + [f"ingest.{setting}" for setting in settings],
    )
    assert run_ingest(cfg, log=lambda line: None).quarantined == 0
    return output


def _loader_config(name: str) -> Config:
    spec = entry(name).input
    if name in FULL_SIZE:
        clip = ["clip.T=16", "clip.stride=1", "clip.crop=224"]
    else:
        clip = ["clip.crop=32"]
        clip += CLIP_FOR.get(name, [f"clip.T={min(spec.frames, 8)}", "clip.stride=2"])
    small = ["model.width=8"] if "width" in arguments(name) else []
    extra = ["flow.L=4"] if spec.flow else []
    return resolve_inputs(load_config(None, [f"model.name={name}", *small, *clip, *extra]))


@pytest.mark.parametrize("name", available())
def test_family_trains_on_loader_clips(request, motion_data, name):
    cfg = _loader_config(name)
    data = request.getfixturevalue("motion_data_224") if name in FULL_SIZE else motion_data
    batch = next(
        iter_clip_batches(
            data,
            split="train",
            clip=cfg.clip,
            flow_L=cfg.flow.L,
            train=True,
            batch_rows=FULL_SIZE.get(name, 4),
        )
    )
    batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    assert name not in FULL_SIZE or len(batch["label"]) == FULL_SIZE[name]
    model = channels_last(build_model(cfg, num_classes=4))
    logits = model(to_device(batch, torch.device("cpu"), Normalization.of(cfg.clip)))
    assert logits.shape == (len(batch["label"]), 4)
    F.cross_entropy(logits, batch["label"]).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # Each gradient in its weight's layout: DDP copies (and warns about) any other.
    restrided = [
        f"{name} {tuple(p.shape)}: weight {p.stride()}, gradient {p.grad.stride()}"
        for name, p in model.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    ]
    assert not restrided, restrided
