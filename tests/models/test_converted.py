"""vidray's I3D and SlowFast networks are PyTorchVideo's layer for layer: a reference
network built by PyTorchVideo 0.1.5, with random weights and BN statistics, gives the
same logits here after `from_pytorchvideo` renames its state dict.

Both take the same frames: PyTorchVideo's SlowFast is handed its slow pathway as
PyTorchVideo's own transform picks it (``PackPathway``: linspace(0, T-1, T/α))."""

from __future__ import annotations

import pytest
import torch
from reference import randomise

from vidray.errors import VidrayError
from vidray.models import build
from vidray.models.converted import from_pytorchvideo, is_pytorchvideo

hub = pytest.importorskip("pytorchvideo.models.hub")
slowfast = pytest.importorskip("pytorchvideo.models.slowfast")

pytestmark = pytest.mark.slow  # full-size networks on CPU: a few seconds each


def _same_logits(reference, ours, reference_input, clip) -> None:
    state = reference.state_dict()
    assert is_pytorchvideo(state)
    ours.load_state_dict(from_pytorchvideo(state))  # strict: every tensor has its place
    with torch.no_grad():
        expected, got = reference(reference_input), ours.eval()(clip)
    # At the logits' own scale (R101's random statistics make them large): a wrong
    # padding or a layer out of place moves them by a tenth or more, float32's rounding
    # by a few parts in ten million.
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-5)


def test_i3d_r50_is_pytorchvideos():
    reference = randomise(hub.i3d_r50(pretrained=False))
    ours = build("i3d", num_classes=400, time_padding="zeros")  # PyTorchVideo pads with zeros
    clip = torch.randn(1, 3, 8, 224, 224)
    _same_logits(reference, ours, clip, clip)


@pytest.mark.parametrize(
    ("name", "reference_builder", "alpha", "fusion_kernel"),
    [
        ("slowfast_r50", lambda: hub.slowfast_r50(pretrained=False), 4, 7),  # the hub's 8×8
        (
            "slowfast_r50",
            lambda: slowfast.create_slowfast(
                slowfast_fusion_conv_kernel_size=(5, 1, 1),
                slowfast_fusion_conv_stride=(8, 1, 1),
                head_pool_kernel_sizes=((4, 7, 7), (32, 7, 7)),
            ),
            8,
            5,
        ),  # 4×16
        ("slowfast_r101", lambda: hub.slowfast_r101(pretrained=False), 4, 5),  # the hub's 8×8
    ],
    ids=["r50-8x8", "r50-4x16", "r101-8x8"],
)
def test_slowfast_is_pytorchvideos(name, reference_builder, alpha, fusion_kernel):
    reference = randomise(reference_builder())
    ours = build(name, num_classes=400, alpha=alpha, fusion_kernel=fusion_kernel)
    clip = torch.randn(1, 3, 32, 224, 224)
    slow = clip.index_select(2, torch.linspace(0, 31, 32 // alpha).long())
    _same_logits(reference, ours, [slow, clip], clip)


def test_a_key_of_no_known_kind_is_named():
    with pytest.raises(VidrayError, match=r"'blocks\.3\.attention\.weight' has no place"):
        from_pytorchvideo(
            {"blocks.0.conv.weight": torch.zeros(1), "blocks.3.attention.weight": torch.zeros(1)}
        )
