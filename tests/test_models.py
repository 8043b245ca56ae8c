import pytest
import torch

from vidray.errors import VidrayError
from vidray.models import available, build, entry


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


def test_unknown_argument_lists_the_valid_ones():
    with pytest.raises(VidrayError, match=r"takes no argument depth; valid: width, dropout"):
        build("simple3d", num_classes=3, depth=4)


def test_registry_describes_inputs():
    assert "simple3d" in available()
    spec = entry("simple3d").input
    assert spec.frames >= 1 and spec.crop > 0 and spec.flow == 0
