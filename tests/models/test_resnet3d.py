import pytest
import torch
from torchvision.models import video as tv_video

from vidray.errors import VidrayError
from vidray.models import build, entry
from vidray.models.flops import count_macs, count_params

NAMES = ["r3d_18", "mc3_18", "r2plus1d_18"]
WEIGHTS = {
    "r3d_18": tv_video.R3D_18_Weights,
    "mc3_18": tv_video.MC3_18_Weights,
    "r2plus1d_18": tv_video.R2Plus1D_18_Weights,
}


def _clip() -> torch.Tensor:
    return torch.randn(2, 3, 8, 32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_small_resnet3d_returns_logits_and_backpropagates(name):
    model = build(name, num_classes=5, width=8, dropout=0.1)
    logits = model(_clip())
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "params"),
    [("r3d_18", 33_371_472), ("mc3_18", 11_695_440), ("r2plus1d_18", 31_505_325)],
)
def test_resnet3d_has_the_published_parameter_count(name, params):
    with torch.device("meta"):
        model = build(name, num_classes=400)
    assert count_params(model) == params


@pytest.mark.parametrize("name", NAMES)
def test_full_width_is_torchvisions_network_so_its_weights_fit(name):
    with torch.device("meta"):
        ours = build(name, num_classes=400).state_dict()
        theirs = getattr(tv_video, name)().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("name", NAMES)
def test_resnet3d_multiply_adds_match_torchvisions_published_figure(name):
    with torch.device("meta"):
        model = build(name, num_classes=400)
        clip = torch.empty(1, 3, 16, 112, 112)
    # torchvision's "_ops" are GMACs at 16×112×112 (40.697 for R3D-18)
    gmacs = count_macs(model, clip) / 1e9
    assert gmacs == pytest.approx(WEIGHTS[name].KINETICS400_V1.meta["_ops"], rel=1e-3)


def test_width_scales_every_stage_and_depth_picks_the_blocks():
    model = build("r3d_18", num_classes=5, width=8, depth=34)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    assert [stage[-1].conv2[1].num_features for stage in stages] == [8, 16, 32, 64]
    assert model.fc.in_features == 64


def test_an_unsupported_depth_is_a_clear_error():
    with pytest.raises(VidrayError, match=r"r3d_18: depth must be one of 10, 18, 34, got 50"):
        build("r3d_18", num_classes=5, depth=50)


@pytest.mark.parametrize("name", NAMES)
def test_weights_load_from_a_saved_file(name, tmp_path):
    saved = build(name, num_classes=5, width=8).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(saved.state_dict(), path)
    loaded = build(name, num_classes=5, width=8, pretrained=str(path)).eval()
    clip = _clip()
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), saved(clip))


def test_weights_for_another_class_count_load_all_but_a_fresh_head(tmp_path):
    saved = build("r2plus1d_18", num_classes=7, width=8)
    path = tmp_path / "kinetics_like.pt"
    torch.save(saved.state_dict(), path)
    tuned = build("r2plus1d_18", num_classes=3, width=8, pretrained=str(path))
    assert tuned.fc.out_features == 3
    torch.testing.assert_close(tuned.stem[0].weight, saved.stem[0].weight)
    torch.testing.assert_close(
        tuned.layer4[1].conv2[0][3].weight, saved.layer4[1].conv2[0][3].weight
    )


def test_weights_saved_at_another_width_are_a_clear_error(tmp_path):
    path = tmp_path / "narrow.pt"
    torch.save(build("mc3_18", num_classes=5, width=8).state_dict(), path)
    with pytest.raises(
        VidrayError, match=r"does not fit this model: stem.0.weight is \(8, 3, 3, 7, 7\)"
    ):
        build("mc3_18", num_classes=5, width=16, pretrained=str(path))


def test_an_unreadable_weights_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(VidrayError, match=r"cannot read pretrained weights .*notes.pt") as raised:
        build("r3d_18", num_classes=5, width=8, pretrained=str(path))
    assert "\n" not in str(raised.value)


def test_an_unknown_weights_name_lists_torchvisions_without_downloading():
    with pytest.raises(
        VidrayError, match=r"not found: KINETICS700 .*such as R3D_18_Weights.KINETICS400_V1"
    ):
        build("r3d_18", num_classes=5, width=8, pretrained="KINETICS700")


@pytest.mark.parametrize("name", NAMES)
def test_resnet3d_declares_torchvisions_kinetics_clip(name):
    spec = entry(name).input
    assert (spec.frames, spec.crop, spec.flow) == (16, 112, 0)


def test_resnet3d_rejects_an_unknown_argument():
    with pytest.raises(
        VidrayError,
        match=r"'mc3_18' takes no argument fusion; valid: depth, width, dropout, pretrained",
    ):
        build("mc3_18", num_classes=3, fusion="avg")
