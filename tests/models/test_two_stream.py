"""Two-stream networks: spatial + temporal ResNets, three fusions, each stream alone."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.nn import functional as F

import vidray.models.two_stream  # noqa: F401  (registers the family)
from vidray.errors import VidrayError
from vidray.models import build, entry

SMALL = {"width": 8, "depth": 18, "flow": 2}
RESNET18_400 = 11_689_512 - (512 * 1000 + 1000) + (512 * 400 + 400)  # torchvision, 400 classes


def _inputs(batch: int = 2, frames: int = 3, flow: int = 2, size: int = 32) -> dict:
    return {
        "rgb": torch.randn(batch, 3, frames, size, size),
        "flow": torch.rand(batch, 2 * flow, size, size) * 2 - 1,
    }


@pytest.mark.parametrize("streams", ["both", "rgb", "flow"])
@pytest.mark.parametrize("fusion", ["avg", "concat", "conv"])
def test_small_model_gives_logits_and_trains_every_parameter(fusion, streams):
    model = build("two_stream", num_classes=4, fusion=fusion, streams=streams, **SMALL)
    logits = model(_inputs())
    assert logits.shape == (2, 4)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_declares_one_frame_and_ten_flow_fields():
    spec = entry("two_stream").input
    assert (spec.frames, spec.crop, spec.flow) == (1, 224, 10)


def test_avg_fusion_is_the_log_of_the_mean_of_the_streams_softmax():
    torch.manual_seed(0)
    both = build("two_stream", num_classes=5, fusion="avg", **SMALL).eval()
    alone = {
        s: build("two_stream", num_classes=5, streams=s, **SMALL).eval() for s in ("rgb", "flow")
    }
    for model in alone.values():  # each single-stream model is exactly its part of `both`
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in both.state_dict().items() if k in own})
    x = _inputs()
    with torch.no_grad():
        mean_prob = (alone["rgb"](x).softmax(1) + alone["flow"](x).softmax(1)) / 2
        torch.testing.assert_close(both(x), mean_prob.log())
        torch.testing.assert_close(both(x).softmax(1), mean_prob)


def test_spatial_stream_reads_the_middle_frame():
    model = build("two_stream", num_classes=3, streams="rgb", **SMALL).eval()
    x = _inputs(batch=1, frames=5)
    others = {**x, "rgb": x["rgb"].clone()}
    others["rgb"][:, :, [0, 1, 3, 4]] = 0
    middle = {**x, "rgb": x["rgb"].clone()}
    middle["rgb"][:, :, 2] = 0
    with torch.no_grad():
        assert torch.equal(model(x), model(others))
        assert not torch.allclose(model(x), model(middle))


def test_temporal_stream_from_rgb_weights_sees_a_uniform_stack_as_rgb_times_2l_over_3(tmp_path):
    # Cross-modality init: every one of the 2L input channels gets mean_c w_rgb[:, c], so
    # with each channel equal to an image x, conv1 gives sum_j mean_c w[:, c] x
    # = (2L / 3) * (the RGB conv1 on the image with x in all three channels).
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pt"
    torch.save(tv.state_dict(), path)
    model = build("two_stream", num_classes=3, flow=10, pretrained=str(path))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        temporal = model.streams["flow"].conv1(x.expand(-1, 20, -1, -1))
        rgb = tv.conv1(x.expand(-1, 3, -1, -1))
        torch.testing.assert_close(temporal, rgb * 20 / 3, rtol=1e-4, atol=1e-4)
        # and the spatial stream holds the RGB weights unchanged
        torch.testing.assert_close(model.streams["rgb"].conv1.weight, tv.conv1.weight)


def test_full_size_is_two_torchvision_resnets_with_a_20_channel_conv1():
    with torch.device("meta"):
        model = build("two_stream", num_classes=400)
    params = sum(p.numel() for p in model.parameters())
    assert params == 2 * RESNET18_400 + 64 * 7 * 7 * (20 - 3) == 22_816_736


def test_unknown_fusion_lists_the_valid_ones():
    with pytest.raises(VidrayError, match="unknown fusion 'max'; valid: avg, concat, conv"):
        build("two_stream", num_classes=3, fusion="max", **SMALL)


def test_unknown_streams_lists_the_valid_ones():
    with pytest.raises(VidrayError, match="unknown streams 'depth'; valid: both, rgb, flow"):
        build("two_stream", num_classes=3, streams="depth", **SMALL)


def test_a_flow_stack_of_another_length_is_a_vidray_error():
    model = build("two_stream", num_classes=3, **SMALL)
    with pytest.raises(VidrayError, match="reads 2 flow fields, got 3"):
        model(_inputs(flow=3))


def test_an_rgb_only_clip_is_a_vidray_error():
    model = build("two_stream", num_classes=3, **SMALL)
    with pytest.raises(VidrayError, match=r"reads \{'rgb', 'flow'\} inputs"):
        model(torch.randn(1, 3, 1, 32, 32))
