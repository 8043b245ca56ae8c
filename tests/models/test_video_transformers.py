"""torchvision's MViT, Video Swin and S3D as vidray families: torchvision's state_dicts
load unchanged and give its logits, a new class count gets a fresh classifier, and a
clip a network cannot take is one line before its forward pass."""

from __future__ import annotations

import time

import pytest
import torch
from torchvision.models import video as tv_video

from vidray.config import load_config
from vidray.errors import VidrayError
from vidray.models import arguments, build, entry
from vidray.models.flops import count_macs, count_params
from vidray.models.video_transformers import _FAMILIES
from vidray.train.driver import check_model
from vidray.train.inputs import resolve_inputs

NAMES = ["mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b", "s3d"]


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter moved off torchvision's init (zero biases, unit norms, zero
    relative-position tables) and S3D's batch-norm statistics drawn, so that each tensor
    a wrong key or layout would misplace changes the logits."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torchvisions_state_dict_gives_torchvisions_logits(name, tmp_path):
    torch.manual_seed(0)
    theirs = _randomised(getattr(tv_video, name)(weights=None)).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(theirs.state_dict(), path)
    ours = build(name, num_classes=400, pretrained=str(path)).eval()
    clip = torch.randn(1, 3, 16, 224, 224)  # the clip every one of them declares
    start = time.perf_counter()
    with torch.no_grad():
        expected, got = theirs(clip), ours(clip)
    print(f"{name}: two forward passes {time.perf_counter() - start:.1f} s")
    print(
        f"{name}: max |diff| {(got - expected).abs().max():.2e}, logits up to "
        f"{expected.abs().max():.2f}"
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_classifier_is_what_another_class_count_replaces():
    """For every family the tensors sized by the class count are the classifier's
    (``head`` in `_FAMILIES`), so `load_pretrained` replaces it and keeps the rest."""
    for name in NAMES:
        with torch.device("meta"):
            state = build(name, num_classes=7).state_dict()
        head = _FAMILIES[name].head
        assert {k for k, v in state.items() if v.shape[:1] == (7,)} == {
            f"{head}.weight",
            f"{head}.bias",
        }, name


@pytest.mark.slow  # S3D is the smallest, and still 8 M parameters to build, save and load
def test_weights_for_another_class_count_keep_the_trunk_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "kinetics_like.pt"
    saved = tv_video.s3d(weights=None, num_classes=400)
    torch.save(saved.state_dict(), path)
    tuned = build("s3d", num_classes=3, pretrained=str(path))
    assert tuned.classifier[1].out_channels == 3
    trunk = {k: v for k, v in saved.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in trunk.items())


def test_a_file_of_another_family_is_a_one_line_error(tmp_path):
    path = tmp_path / "r3d.pt"
    torch.save(build("r3d_18", num_classes=4, width=8).state_dict(), path)
    with pytest.raises(VidrayError, match=r"pretrained .*r3d.pt.* does not fit") as raised:
        build("s3d", num_classes=4, pretrained=str(path))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name", NAMES)
def test_family_declares_its_weights_clip(name):
    weights = entry(name).weights.KINETICS400_V1
    spec = entry(name).input
    # torchvision's transforms crop 224; its "_ops" and MViT's embeddings are for 16 frames.
    assert (spec.frames, spec.crop, spec.flow) == (16, weights.transforms().crop_size[0], 0)
    assert arguments(name) == ["dropout", "pretrained"]


def test_training_takes_the_short_weights_name_and_names_the_clip_mvit_needs():
    """`vidray train`'s check (shapes only, nothing downloaded) accepts KINETICS400_V1
    and then finds the clip MViT cannot take, as one line."""
    overrides = ["model.name=mvit_v1_b", "model.pretrained=KINETICS400_V1", "clip.T=8"]
    cfg = resolve_inputs(load_config(None, overrides))
    with pytest.raises(VidrayError, match=r"'mvit_v1_b' needs clip.T=16 and clip.crop=224") as e:
        check_model(cfg, num_classes=4)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "T", "crop", "message"),
    [
        ("mvit_v1_b", 15, 224, r"'mvit_v1_b' needs clip.T=16 and clip.crop=224 .*got T=15"),
        ("mvit_v2_s", 16, 192, r"needs clip.T=16 and clip.crop=224 .*crop 192x192"),
        ("s3d", 12, 224, r"'s3d' needs clip.T>=13 and clip.crop>=209 .*got T=12"),
        ("s3d", 16, 208, r"'s3d' needs clip.T>=13 and clip.crop>=209 .*crop 208x208"),
    ],
)
def test_a_clip_the_network_cannot_take_is_one_line_before_its_forward_pass(name, T, crop, message):
    # (MViT-B would run at T=15, whose patch grid is 16's, on embeddings learnt for 16.)
    with torch.device("meta"):
        model = build(name, num_classes=4)
        with pytest.raises(VidrayError, match=message) as raised:
            model(torch.empty(1, 3, T, crop, crop))
    assert "\n" not in str(raised.value)


@pytest.mark.slow  # a full-size S3D forward pass on the meta device: a second or more
def test_s3d_takes_the_smallest_clip_its_check_lets_through():
    with torch.device("meta"):
        assert build("s3d", num_classes=4)(torch.empty(1, 3, 13, 209, 209)).shape == (1, 4)


def test_dropout_sits_before_the_classifier_at_the_papers_rate_or_the_given_one():
    with torch.device("meta"):
        assert build("mvit_v2_s", num_classes=4).head[0].p == 0.5
        assert build("s3d", num_classes=4, dropout=0.1).classifier[0].p == 0.1
        swin = build("swin3d_t", num_classes=4)
    assert isinstance(swin.avgpool[1], torch.nn.Dropout) and swin.avgpool[1].p == 0.5
    assert swin.pos_drop.p == 0.0  # torchvision's network keeps no dropout elsewhere


@pytest.mark.slow  # six full-size networks on the meta device: a few seconds
@pytest.mark.parametrize("name", NAMES)
def test_size_and_multiply_adds_are_torchvisions_published_figures(name):
    meta = entry(name).weights.KINETICS400_V1.meta
    with torch.device("meta"):
        model = build(name, num_classes=400)
        clip = torch.empty(1, 3, 16, 224, 224)
    assert count_params(model) == meta["num_params"]
    # torchvision's "_ops" are GMACs at 16×224², counted as `count_macs` counts
    assert count_macs(model, clip) / 1e9 == pytest.approx(meta["_ops"], abs=5e-4)


@pytest.mark.slow  # writes MViT's 146 MB of weights
def test_a_torchvision_mvit_file_passes_trainings_weight_resolution(tmp_path):
    with torch.device("meta"):
        shapes = build("mvit_v1_b", num_classes=400).state_dict()
    path = tmp_path / "mvit_v1_b.pt"
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}, path)
    cfg = resolve_inputs(load_config(None, ["model.name=mvit_v1_b", f"model.pretrained={path}"]))
    assert cfg.clip.T == 16 and cfg.clip.crop == 224
    # A bare file records no normalisation: the family's torchvision weights' is assumed.
    assert (cfg.clip.mean, cfg.clip.std) == ([0.45] * 3, [0.225] * 3)
