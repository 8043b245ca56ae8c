"""The shared 2D trunk: torchvision's ResNet with a width knob, ImageNet weights, new stems."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torchvision.models import get_weight

from vidray.errors import VidrayError
from vidray.models.backbone2d import ResNet2d, fold_time, resnet2d, stack_time


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 with random weights and non-trivial BN statistics, saved to a file."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(tv.state_dict(), path)
    return tv, path


def _torchvision_features(tv: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.Sequential(*list(tv.children())[:-1])(x).flatten(1)


def test_width_scales_the_stem_and_every_stage():
    trunk = ResNet2d(depth=50, width=16)
    assert trunk.conv1.out_channels == 16
    assert trunk.stage_channels == [64, 128, 256, 512]
    assert trunk.out_channels == 512
    small = ResNet2d(depth=18, width=8)
    assert small.stage_channels == [8, 16, 32, 64]
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 64, 1, 1)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_paper_width_has_torchvision_parameter_names_and_shapes(depth):
    with torch.device("meta"):
        ours = ResNet2d(depth=depth).state_dict()
        theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    expected = {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == expected


def test_pretrained_file_gives_the_torchvision_models_features(resnet18_file):
    tv, path = resnet18_file
    trunk = resnet2d(depth=18, pretrained=str(path)).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk.pooled(image), _torchvision_features(tv, image))
        maps = trunk.stage_maps(image)
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512]


def test_torchvision_weights_name_is_read_from_the_hub_cache(resnet18_file, tmp_path, monkeypatch):
    # Put the file where torch.hub caches this weight's download: it is then read, not fetched.
    tv, path = resnet18_file
    name = "ResNet18_Weights.IMAGENET1K_V1"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / get_weight(name).url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    trunk = resnet2d(depth=18, pretrained=name).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk.pooled(image), _torchvision_features(tv, image))


def test_missing_weights_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(VidrayError, match=re.escape(f"weights file not found: {missing}")):
        resnet2d(pretrained=str(missing))


def test_unknown_torchvision_weights_name_is_a_vidray_error():
    with pytest.raises(VidrayError, match=r"unknown torchvision weights 'ResNet18_Weights\.NOPE'"):
        resnet2d(pretrained="ResNet18_Weights.NOPE")


def test_weights_of_another_depth_do_not_load(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(VidrayError, match=r"do not fit a ResNet-34"):
        resnet2d(depth=34, pretrained=str(path))


def test_a_file_that_is_not_a_state_dict_is_a_vidray_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(VidrayError, match=re.escape(f"cannot read pretrained weights {junk}")):
        resnet2d(pretrained=str(junk))


def test_pretrained_weights_need_the_papers_width(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(VidrayError, match="fit only width=64"):
        resnet2d(width=16, pretrained=str(path))


def test_unknown_depth_lists_the_valid_ones():
    with pytest.raises(VidrayError, match="depth 101 is not available; valid: 18, 34, 50"):
        ResNet2d(depth=101)


def test_average_stem_responds_to_a_uniform_stack_as_rgb_scaled_by_channels_over_three():
    # w_new[:, j] = mean_c w[:, c] for all j, so with every channel equal to x:
    #   sum_j w_new[:, j] * x = C * mean_c w[:, c] * x = (C / 3) * sum_c w[:, c] * x
    trunk = ResNet2d(depth=18, width=8)
    rgb_conv = trunk.conv1
    trunk.set_input_channels(20, from_rgb="average")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            trunk.conv1(x.expand(-1, 20, -1, -1)),
            rgb_conv(x.expand(-1, 3, -1, -1)) * 20 / 3,
            rtol=1e-4,  # float32 sums of 20 vs 3 products round differently
            atol=1e-4,
        )


def test_tiled_stem_responds_to_a_static_clip_as_rgb_to_its_frame():
    trunk = ResNet2d(depth=18, width=8)
    rgb_conv = trunk.conv1
    trunk.set_input_channels(3 * 5, from_rgb="tile")
    frame = torch.randn(2, 3, 32, 32)
    static = frame.unsqueeze(2).expand(-1, -1, 5, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            trunk.conv1(stack_time(static)), rgb_conv(frame), rtol=1e-4, atol=1e-4
        )


def test_fresh_stem_without_rgb_weights_is_independent_per_channel():
    trunk = ResNet2d(depth=18, width=8)
    trunk.set_input_channels(4, from_rgb=None)
    w = trunk.conv1.weight
    assert w.shape == (8, 4, 7, 7)
    assert not torch.equal(w[:, 0], w[:, 1])


def test_time_is_folded_into_the_batch_and_stacked_frame_major():
    clip = torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(fold_time(clip)[1 * 4 + 2], clip[1, :, 2])
    assert torch.equal(stack_time(clip)[1, 3 * 2 + 1], clip[1, 1, 2])
