"""Every registered family trains on the clips the loader derives for it.

The loader builds each model the clip its InputSpec declares (T frames, or one
RGB frame plus L flow fields); here every family, at a small width, takes a
batch of real ingested windows and does a forward and backward pass, laid out
as the training loop lays it out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidray.config import load_config
from vidray.data.clips import iter_clip_batches
from vidray.device import Normalization, channels_last, to_device
from vidray.models import available, entry
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model

# Stored windows are 16 frames of short side 64 (conftest's motion_data).
CLIP_FOR = {
    "slow_fusion": ["clip.T=10", "clip.stride=1"],
    "slowfast_r50": ["clip.T=16", "clip.stride=1"],
}


@pytest.mark.parametrize("name", available())
def test_family_trains_on_loader_clips(motion_data, name):
    spec = entry(name).input
    overrides = CLIP_FOR.get(name, [f"clip.T={min(spec.frames, 8)}", "clip.stride=2"])
    extra = ["flow.L=4"] if spec.flow else []
    cfg = resolve_inputs(
        load_config(
            None, [f"model.name={name}", "model.width=8", "clip.crop=32", *overrides, *extra]
        )
    )
    batch = next(
        iter_clip_batches(
            motion_data, split="train", clip=cfg.clip, flow_L=cfg.flow.L, train=True, batch_rows=4
        )
    )
    batch = {k: torch.from_numpy(v) for k, v in batch.items()}
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
