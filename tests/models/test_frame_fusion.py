"""Single-frame, late-fusion and early-fusion models over a shared 2D trunk."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.nn import functional as F

import vidray.models.frame_fusion  # noqa: F401  (registers the family)
from vidray.errors import VidrayError
from vidray.models import build, entry

# torchvision's documented parameter counts with their 1000-class fc, re-headed for 400 classes
RESNET18_400 = 11_689_512 - (512 * 1000 + 1000) + (512 * 400 + 400)  # 11,381,712
RESNET50_400 = 25_557_032 - (2048 * 1000 + 1000) + (2048 * 400 + 400)  # 24,327,632
SMALL = {"width": 8, "depth": 18}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("single_frame", {}),
        ("late_fusion_pool", {}),
        ("late_fusion_fc", {"frames": 4, "hidden": 32}),
        ("early_fusion", {"frames": 4}),
    ],
)
def test_small_model_gives_logits_and_trains_every_parameter(name, kwargs):
    model = build(name, num_classes=5, **SMALL, **kwargs)
    logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_single_frame_trains_on_frames_and_fused_models_on_clips():
    assert entry("single_frame").input.frames == 1
    assert entry("late_fusion_fc").input.frames == entry("early_fusion").input.frames == 10
    assert entry("early_fusion").input.crop == 224 and entry("early_fusion").input.flow == 0


@pytest.mark.parametrize(("depth", "expected"), [(18, RESNET18_400), (50, RESNET50_400)])
def test_single_frame_has_torchvision_resnet_parameter_count(depth, expected):
    with torch.device("meta"):
        model = build("single_frame", num_classes=400, depth=depth)
        tv = getattr(torchvision.models, f"resnet{depth}")(num_classes=400)
    assert _params(model) == _params(tv) == expected


def test_early_fusion_differs_from_single_frame_only_in_conv1():
    with torch.device("meta"):
        model = build("early_fusion", num_classes=400, frames=10)
    # conv1 reads 3T = 30 channels instead of 3: 64 x 7 x 7 x 27 more weights
    assert _params(model) == RESNET18_400 + 64 * 7 * 7 * 27 == 11_466_384


def test_late_fusion_fc_adds_an_mlp_over_concatenated_frame_features():
    with torch.device("meta"):
        model = build("late_fusion_fc", num_classes=400, frames=10, hidden=4096)
    trunk = RESNET18_400 - (512 * 400 + 400)
    mlp = (10 * 512 * 4096 + 4096) + (4096 * 400 + 400)
    assert _params(model) == trunk + mlp == 33_790_928


def test_frame_order_matters_to_late_fc_and_early_fusion_but_not_to_pooling():
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 32, 32)
    reversed_clip = clip.flip(2)
    for name, kwargs, sees_order in [
        ("late_fusion_pool", {}, False),
        ("late_fusion_fc", {"frames": 4, "hidden": 32}, True),
        ("early_fusion", {"frames": 4}, True),
    ]:
        model = build(name, num_classes=3, **SMALL, **kwargs).eval()
        with torch.no_grad():
            same = torch.allclose(model(clip), model(reversed_clip), atol=1e-5)
        assert same != sees_order, name


def test_single_frame_is_late_pooling_over_per_frame_logits():
    # mean_t(W f_t + b) = W mean_t(f_t) + b: averaging logits over frames is pooling features
    model = build("single_frame", num_classes=3, **SMALL).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([model(clip[:, :, t : t + 1]) for t in range(4)]).mean(0)
        torch.testing.assert_close(model(clip), per_frame)


def test_early_fusion_with_2d_weights_sees_a_static_clip_as_the_2d_net_sees_its_frame(
    resnet18_file,
):
    tv, path = resnet18_file
    model = build("early_fusion", num_classes=3, frames=4, pretrained=str(path)).eval()
    frame = torch.randn(1, 3, 64, 64)
    static = frame.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    tv_features = torch.nn.Sequential(*list(tv.children())[:-1])
    with torch.no_grad():
        torch.testing.assert_close(
            model.features(static)[:, 0], tv_features(frame).flatten(1), rtol=1e-4, atol=1e-4
        )


def test_fixed_length_models_reject_another_clip_length():
    model = build("late_fusion_fc", num_classes=3, frames=4, hidden=8, **SMALL)
    with pytest.raises(VidrayError, match="built for clips of 4 frames, got 3"):
        model(torch.randn(1, 3, 3, 32, 32))
