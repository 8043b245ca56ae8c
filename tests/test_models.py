from typing import get_args

import pytest
import torch

from vidray.config import ModelName, load_config
from vidray.errors import VidrayError
from vidray.models import InputSpec, available, build, entry
from vidray.models.registry import register


def test_simple3d_returns_logits_per_clip():
    model = build("simple3d", num_classes=5, width=8)
    out = model(torch.randn(2, 3, 8, 56, 56))
    assert out.shape == (2, 5)


def test_simple3d_width_scales_its_parameters():
    small = sum(p.numel() for p in build("simple3d", num_classes=4, width=8).parameters())
    large = sum(p.numel() for p in build("simple3d", num_classes=4, width=16).parameters())
    # conv weights grow with width squared
    assert 3.5 < large / small < 4.1


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(
        VidrayError, match=r"unknown model 'simple_3d' \(did you mean 'simple3d'\?\)"
    ):
        build("simple_3d", num_classes=3)


def test_the_config_names_every_family_of_the_zoo_and_no_other():
    """`model.name` is checked when the config loads, before torch is imported."""
    assert sorted(get_args(ModelName)) == available()
    with pytest.raises(
        VidrayError, match=r"model.name must be one of .* \(did you mean 'slowfast_r50'\?\)"
    ):
        load_config(None, ["model.name=slowfast50"])


def test_a_family_missing_from_the_config_is_not_registered():
    with pytest.raises(ValueError, match=r"not in vidray\.config\.ModelName"):
        register("unlisted", paper="-", input=InputSpec(frames=1, crop=8))(lambda **_: None)
    assert "unlisted" not in available()


def test_unknown_argument_lists_the_valid_ones():
    with pytest.raises(VidrayError, match=r"takes no argument depth; valid: width, dropout"):
        build("simple3d", num_classes=3, depth=4)


@pytest.mark.parametrize(
    ("name", "frames", "crop", "flow"),
    [
        ("c3d", 16, 112, 0),  # Tran et al. 2015: 16-frame clips, 112x112 crops
        ("r2plus1d_18", 16, 112, 0),  # torchvision's Kinetics weights: 16 x 112
        ("two_stream", 1, 224, 10),  # Simonyan & Zisserman 2014: one frame, L = 10 flow fields
        ("slow_fusion", 10, 170, 0),  # Karpathy et al. 2014: 10 frames, 170x170 crops
        ("slowfast_r50", 32, 224, 0),  # 4x16: the fast pathway's 32 frames (alpha 8 over 4)
        ("single_frame", 1, 224, 0),
    ],
)
def test_each_family_declares_the_input_of_its_paper(name, frames, crop, flow):
    assert name in available()
    spec = entry(name).input
    assert (spec.frames, spec.crop, spec.flow) == (frames, crop, flow)
