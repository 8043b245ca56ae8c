import pytest
import torch

from vidray.errors import VidrayError
from vidray.models import build, entry
from vidray.models.flops import count_macs, count_params


def _paper_c3d() -> tuple[torch.nn.Module, torch.Tensor]:
    """The full-size network and its 16×112×112 input on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return build("c3d", num_classes=487), torch.empty(1, 3, 16, 112, 112)


@pytest.mark.parametrize(("frames", "crop"), [(16, 32), (8, 40)])
def test_small_c3d_returns_logits_and_backpropagates(frames, crop):
    model = build("c3d", num_classes=5, width=8)
    logits = model(torch.randn(2, 3, frames, crop, crop))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.features.conv1a.weight.grad.abs().sum() > 0


def test_c3d_has_the_papers_parameter_count():
    model, _ = _paper_c3d()
    assert count_params(model) == 79_991_015


def test_c3d_pool5_gives_the_papers_8192_features():
    model, clip = _paper_c3d()
    assert model.features(clip).shape == (1, 512, 1, 4, 4)
    assert model.classifier.fc6.in_features == 8192


def test_c3d_multiply_adds_are_within_5_percent_of_the_lectures_39_5_g():
    model, clip = _paper_c3d()
    macs = count_macs(model, clip)
    assert macs == 38_548_959_232  # convs and FCs counted layer by layer
    assert abs(macs / 39.5e9 - 1) < 0.05


def test_c3d_declares_the_papers_clip():
    spec = entry("c3d").input
    assert (spec.frames, spec.crop, spec.flow) == (16, 112, 0)


def test_c3d_rejects_an_unknown_argument():
    with pytest.raises(VidrayError, match=r"'c3d' takes no argument depth; valid: width, dropout"):
        build("c3d", num_classes=3, depth=8)
