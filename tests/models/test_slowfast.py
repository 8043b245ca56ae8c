"""SlowFast: two pathways of one trunk, fast → slow laterals, the paper's sizes and MACs."""

from __future__ import annotations

import pytest
import torch

from vidray.errors import VidrayError
from vidray.models import build
from vidray.models.flops import count_macs, count_params


@pytest.mark.parametrize("name", ["slowfast_r50", "slowfast_r101"])
def test_small_slowfast_returns_logits_and_trains(name):
    model = build(name, num_classes=5, width=16, alpha=4)
    out = model(torch.randn(2, 3, 8, 32, 32))
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_slow_pathway_sees_frames_spread_over_the_clip_and_fast_sees_all():
    model = build("slowfast_r50", num_classes=3, width=16, alpha=4).eval()
    seen = {}
    for name in ("slow", "fast"):
        stem = getattr(model, name).stem
        stem.register_forward_hook(lambda m, args, out, name=name: seen.update({name: args[0]}))
    clip = torch.randn(1, 3, 10, 32, 32)
    with torch.no_grad():
        model(clip)
    # ceil(10/4) = 3 frames, linspace(0, 9, 3) rounded down: the first, middle and last.
    assert torch.equal(seen["slow"], clip[:, :, [0, 4, 9]])
    assert torch.equal(seen["fast"], clip)


def test_laterals_add_two_beta_c_channels_to_the_slow_pathway():
    with torch.device("meta"):
        model = build("slowfast_r50", num_classes=400)
    slow_inputs = [getattr(model.slow, f"layer{i}")[0].conv1.in_channels for i in (1, 2, 3, 4)]
    assert slow_inputs == [64 + 16, 256 + 64, 512 + 128, 1024 + 256]
    assert model.head.fc.in_features == 2048 + 256


@pytest.mark.parametrize(
    ("setting", "kwargs", "params", "macs"),
    [
        # PyTorchVideo 0.1.5's create_slowfast with its hub arguments, counted here: its
        # parameters, and its convolutions and matrix products (`count_macs`) on a 256x256
        # test clip. Its zoo lists 34.48 M / 36.69 G for 4x16 (fvcore's count, which adds
        # ops that are not multiply-adds) and 34.57 M / 65.71 G for its 8x8.
        ("4x16", {}, 34_480_216, 36.102e9),
        (
            "8x8, PyTorchVideo's 7x1x1 laterals",
            {"alpha": 4, "fusion_kernel": 7},
            34_566_488,
            65.712e9,
        ),
        ("8x8, the paper's 5x1x1 laterals", {"alpha": 4}, 34_480_216, 65.301e9),
    ],
)
def test_slowfast_r50_matches_pytorchvideo_size(setting, kwargs, params, macs):
    with torch.device("meta"):
        model = build("slowfast_r50", num_classes=400, **kwargs)
        clip = torch.empty(1, 3, 32, 256, 256)
    assert count_params(model) == params
    assert count_macs(model, clip) == pytest.approx(macs, rel=0.005)


def test_width_not_divisible_by_beta_is_a_one_line_error():
    with pytest.raises(VidrayError, match=r"width \* beta must be a whole number"):
        build("slowfast_r50", num_classes=3, width=12)
