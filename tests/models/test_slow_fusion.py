import pytest
import torch

from vidray.errors import VidrayError
from vidray.models import build, entry

FRAMES = 10  # the paper's clip


def _small(num_classes: int = 5) -> torch.nn.Module:
    return build("slow_fusion", num_classes=num_classes, width=12).eval()


def _frames_seen_by_last_step(model: torch.nn.Module, clip: torch.Tensor) -> list[list[int]]:
    """For each conv block, the input frames that its last output time step depends on."""
    clip = clip.clone().requires_grad_(True)
    seen, x = [], clip
    for block in model.features:
        x = block(x)
        (grad,) = torch.autograd.grad(x[:, :, -1].sum(), clip, retain_graph=True)
        seen.append([t for t in range(clip.shape[2]) if grad[:, :, t].abs().sum() > 0])
    return seen


def test_small_slow_fusion_returns_logits_and_backpropagates():
    model = build("slow_fusion", num_classes=5, width=12)
    logits = model(torch.randn(2, 3, FRAMES, 40, 40))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.features.conv1[0].weight.grad.abs().sum() > 0


def test_temporal_extent_grows_layer_by_layer_to_the_whole_clip():
    model = _small()
    seen = _frames_seen_by_last_step(model, torch.randn(1, 3, FRAMES, 48, 48))
    assert [len(frames) for frames in seen] == [4, 6, 10, 10, 10]
    assert seen[0] == [6, 7, 8, 9]  # conv1 fuses 4 frames at stride 2
    assert seen[-1] == list(range(FRAMES))

    # The same extents from the conv kernels and strides: e += (k - 1)·jump, jump *= stride.
    extents, extent, jump = [], 1, 1
    for block in model.features:
        conv = block[0]
        extent += (conv.kernel_size[0] - 1) * jump
        jump *= conv.stride[0]
        extents.append(extent)
    assert extents == [len(frames) for frames in seen]


def test_first_frame_reaches_the_top_but_not_conv1s_last_step():
    model = _small()
    clip = torch.randn(1, 3, FRAMES, 48, 48)
    nudged = clip.clone()
    nudged[:, :, 0] += 1.0
    with torch.no_grad():
        conv1 = model.features.conv1
        assert torch.equal(conv1(clip)[:, :, -1], conv1(nudged)[:, :, -1])
        assert not torch.allclose(model.features(clip), model.features(nudged))


def test_paper_input_gives_alexnets_9216_features():
    with torch.device("meta"):
        model = build("slow_fusion", num_classes=487)
        assert model.features(torch.empty(1, 3, FRAMES, 170, 170)).shape == (1, 256, 1, 6, 6)
    assert model.classifier.fc6.in_features == 9216
    assert model.features.conv1[0].out_channels == 96


def test_a_clip_shorter_than_the_temporal_extent_is_a_clear_error():
    with pytest.raises(VidrayError, match=r"at least 10 frames .* got T=8; set clip.T >= 10"):
        _small()(torch.randn(1, 3, 8, 40, 40))


def test_slow_fusion_declares_the_papers_clip():
    spec = entry("slow_fusion").input
    assert (spec.frames, spec.crop, spec.flow) == (FRAMES, 170, 0)


def test_slow_fusion_rejects_an_unknown_argument():
    with pytest.raises(VidrayError, match=r"takes no argument depth; valid: width, dropout"):
        build("slow_fusion", num_classes=3, depth=5)
