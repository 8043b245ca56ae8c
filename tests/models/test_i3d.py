"""I3D by inflation: the lecture's constant-video property, pretrained loading, sizes, MACs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vidray.errors import VidrayError
from vidray.models import build
from vidray.models.flops import count_macs, count_params
from vidray.models.i3d import inflate_2d_to_3d

RESNETS_2D = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}


def _random_2d_resnet(depth: int, num_classes: int = 10) -> nn.Module:
    """A torchvision ResNet whose BN layers are far from identity, so nothing is trivial."""
    torch.manual_seed(depth)
    model = RESNETS_2D[depth](num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return model.eval()


def _saved_and_reloaded(depth: int, tmp_path) -> tuple[nn.Module, str]:
    """The 2D net as a user has it: weights saved to a file, loaded into a fresh model."""
    path = tmp_path / f"resnet{depth}.pt"
    torch.save(_random_2d_resnet(depth).state_dict(), path)
    model = RESNETS_2D[depth](num_classes=10)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), str(path)


def _constant_video(frames: torch.Tensor, t: int) -> torch.Tensor:
    return frames.unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()


@pytest.mark.parametrize("name", ["i3d", "i3d_nl"])
def test_small_i3d_returns_logits_and_trains(name):
    model = build(name, num_classes=5, width=8)
    out = model(torch.randn(2, 3, 8, 32, 32))
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("depth", [18, 50])
def test_inflated_resnet_gives_2d_logits_on_a_constant_video(depth, tmp_path):
    model2d, path = _saved_and_reloaded(depth, tmp_path)
    inflated = inflate_2d_to_3d(model2d).eval()
    frames = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        logits = inflated(_constant_video(frames, 4))
        assert torch.allclose(logits, model2d(frames), atol=1e-4, rtol=0)
    # The registered builder inflates the same weights from the file.
    built = build("i3d", num_classes=10, depth=depth, pretrained=path).state_dict()
    assert all(torch.equal(built[k], v) for k, v in inflated.state_dict().items())


def test_zero_time_padding_would_break_the_property_at_the_edge_frames(tmp_path):
    model2d, _ = _saved_and_reloaded(18, tmp_path)
    frames = torch.randn(2, 3, 48, 48)
    zero_padded = inflate_2d_to_3d(model2d, time_padding="zeros").eval()
    with torch.no_grad():
        gap = (zero_padded(_constant_video(frames, 4)) - model2d(frames)).abs().max()
    assert gap > 1e-2


def test_pretrained_for_another_label_set_keeps_the_new_classifier(tmp_path):
    model2d, path = _saved_and_reloaded(18, tmp_path)
    model = build("i3d", num_classes=3, depth=18, pretrained=path)
    assert model.head.fc.out_features == 3
    stem = model.stem.conv.weight  # (64, 3, 5, 7, 7): each time slice is the 2D kernel / 5
    assert torch.allclose(stem.sum(dim=2), model2d.conv1.weight, atol=1e-6)


def test_missing_pretrained_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(VidrayError, match=f"pretrained weights file not found: {missing}"):
        build("i3d", num_classes=3, width=8, pretrained=str(missing))


def test_unknown_torchvision_weights_name_is_a_one_line_error():
    with pytest.raises(VidrayError, match=r"unknown torchvision weights 'ResNet50_Weights\.NOPE'"):
        build("i3d", num_classes=3, width=8, pretrained="ResNet50_Weights.NOPE")


def test_pretrained_of_another_depth_is_a_one_line_error(tmp_path):
    _, path = _saved_and_reloaded(18, tmp_path)
    with pytest.raises(VidrayError, match=r"resnet18\.pt: weight 'layer1\.0\.conv1\.weight'"):
        build("i3d", num_classes=3, depth=50, pretrained=path)


def test_res5_stride_1_keeps_a_16x_feature_map_for_detection():
    model = build("i3d", num_classes=3, width=8, res5_stride=1)
    features = model.features(torch.randn(1, 3, 8, 64, 64))
    assert features.shape == (1, 8 * 8 * 4, 4, 4, 4)


def test_i3d_r50_matches_pytorchvideo_size():
    # PyTorchVideo's model zoo counts its "GFLOPs" (multiply-adds) on the 256x256
    # crops of its 3-crop test; at 224x224 the same network costs (224/256)^2 of that.
    with torch.device("meta"):
        model = build("i3d", num_classes=400)
        clip = torch.empty(1, 3, 8, 256, 256)
    assert count_params(model) == pytest.approx(28.04e6, rel=0.001)
    assert count_macs(model, clip) == pytest.approx(37.53e9, rel=0.03)


def test_mac_counter_counts_one_conv_exactly():
    conv = nn.Conv3d(4, 6, (3, 3, 3), stride=(1, 2, 2), padding=1, groups=2)  # bias not counted
    clip = torch.randn(2, 4, 5, 9, 9)  # output (2, 6, 5, 5, 5)
    assert count_macs(conv, clip) == 2 * 6 * (5 * 5 * 5) * (4 // 2) * (3 * 3 * 3)


def test_mac_counter_counts_linear_layers_and_restores_train_mode():
    model = nn.Sequential(nn.Linear(10, 3), nn.ReLU(), nn.Dropout(0.5)).train()
    assert count_macs(model, torch.randn(2, 10)) == 2 * 10 * 3
    assert model.training
