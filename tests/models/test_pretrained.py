"""Published checkpoints through ``model.pretrained``: each layout loads into the network
it was trained as, which computes what it computed where it came from.

PyTorchVideo's networks are built by PyTorchVideo 0.1.5 itself (random weights and
BN statistics) and saved as its hub files are. PySlowFast cannot be built here (its
detection head needs detectron2), so its checkpoints are written from a vidray
network under the names PySlowFast's modules give their weights
(``slowfast/models/{stem,resnet,nonlocal}_helper.py``, ``video_model_builder.py``),
with the ``{"model_state", "cfg"}`` layout of its ``checkpoint.save_checkpoint``.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import yaml
from reference import randomise

from vidray.checkpoints import save_checkpoint
from vidray.config import load_config
from vidray.device import IMAGENET, PYSLOWFAST
from vidray.errors import VidrayError
from vidray.models import build
from vidray.models.converted import from_pytorchvideo
from vidray.models.pretrained import read_pretrained
from vidray.train.evaluate import load_model
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model

hub = pytest.importorskip("pytorchvideo.models.hub")
pv_slowfast = pytest.importorskip("pytorchvideo.models.slowfast")


def assert_same_logits(expected: torch.Tensor, got: torch.Tensor) -> None:
    # At the logits' own scale: a wrong padding, frame or layer moves them by a tenth
    # or more, float32 rounding by a few parts in ten million.
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-4)


def pack_pathway(clip: torch.Tensor, alpha: int) -> list[torch.Tensor]:
    """PyTorchVideo's PackPathway: the slow pathway's frames by linspace."""
    frames = clip.shape[2]
    slow = clip.index_select(2, torch.linspace(0, frames - 1, frames // alpha).long())
    return [slow, clip]


# name, PyTorchVideo network, what vidray must infer from the file alone, its input
REFERENCES = {
    "i3d_r50": (
        "i3d",
        lambda: hub.i3d_r50(pretrained=False),
        {"time_padding": "zeros"},
        lambda clip: clip,
        8,
    ),
    "slowfast_r50_8x8": (
        "slowfast_r50",
        lambda: hub.slowfast_r50(pretrained=False),
        {"alpha": 4, "fusion_kernel": 7},
        lambda clip: pack_pathway(clip, 4),
        32,
    ),
    "slowfast_r50_4x16": (
        "slowfast_r50",
        lambda: pv_slowfast.create_slowfast(
            slowfast_fusion_conv_kernel_size=(5, 1, 1),
            slowfast_fusion_conv_stride=(8, 1, 1),
            head_pool_kernel_sizes=((4, 7, 7), (32, 7, 7)),
        ),
        {"alpha": 8, "fusion_kernel": 5},
        lambda clip: pack_pathway(clip, 8),
        32,
    ),
    "slowfast_r101_8x8": (
        "slowfast_r101",
        lambda: hub.slowfast_r101(pretrained=False),
        {"alpha": 4, "fusion_kernel": 5},
        lambda clip: pack_pathway(clip, 4),
        32,
    ),
}


@pytest.mark.slow  # full-size networks on CPU: a few seconds each
@pytest.mark.parametrize("reference", REFERENCES)
def test_a_pytorchvideo_hub_file_loads_into_the_network_it_was(reference, tmp_path):
    name, make, inferred, reference_input, frames = REFERENCES[reference]
    theirs = randomise(make())
    path = tmp_path / f"{reference}.pyth"
    # As the hub's state_dict (I3D), and as PyTorchVideo's zoo files hold it (the rest).
    saved = theirs.state_dict()
    torch.save(saved if name == "i3d" else {"model_state": saved, "epoch": 196}, path)

    ours = build(name, num_classes=400, pretrained=str(path)).eval()
    for key, value in inferred.items():  # read from the file: nothing was passed
        got = {
            "alpha": lambda: ours.alpha,
            "fusion_kernel": lambda: ours.lateral[0].conv.kernel_size[0],
            "time_padding": lambda: "replicate" if ours.stem.conv.time_pad else "zeros",
        }[key]()
        assert got == value, key

    clip = torch.randn(1, 3, frames, 224, 224)
    with torch.no_grad():
        assert_same_logits(theirs(reference_input(clip)), ours(clip))


# vidray's names -> PySlowFast's (the inverse of what `from_pyslowfast` reads), written
# from PySlowFast's module names, not from vidray's converter.
PYSLOWFAST_NAMES = [
    (r"^head\.fc\.", "head.projection."),
    (r"^lateral\.(\d)\.conv\.", lambda m: f"s{int(m[1]) + 1}_fuse.conv_f2s."),
    (r"^lateral\.(\d)\.bn\.", lambda m: f"s{int(m[1]) + 1}_fuse.bn."),
    (r"^(?:(slow|fast)\.)?stem\.", lambda m: f"s1.pathway{_path(m[1])}_stem."),
    (
        r"^(?:(slow|fast)\.)?layer(\d)\.nl(\d+)\.(theta|phi|g|out)\.",
        lambda m: f"s{int(m[2]) + 1}.pathway{_path(m[1])}_nonlocal{m[3]}.conv_{m[4]}.",
    ),
    (
        r"^(?:(slow|fast)\.)?layer(\d)\.nl(\d+)\.bn\.",
        lambda m: f"s{int(m[2]) + 1}.pathway{_path(m[1])}_nonlocal{m[3]}.bn.",
    ),
    (
        r"^(?:(slow|fast)\.)?layer(\d)\.(\d+)\.(\w+?)(?:\.(\d))?\.",
        lambda m: f"s{int(m[2]) + 1}.pathway{_path(m[1])}_res{m[3]}.{_branch(m[4], m[5])}.",
    ),
]


def _path(pathway: str | None) -> int:
    return 1 if pathway == "fast" else 0


def _branch(part: str, index: str | None) -> str:
    if part == "downsample":
        return "branch1" if index == "0" else "branch1_bn"
    letter = "abc"[int(part[-1]) - 1]
    return f"branch2.{letter}" if part.startswith("conv") else f"branch2.{letter}_bn"


def as_pyslowfast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in PYSLOWFAST_NAMES:
            new, count = re.subn(pattern, replacement, key)
            if count:
                renamed[new] = value
                break
        else:
            raise AssertionError(f"no PySlowFast name for {key}")
    return renamed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "cfg", "frames"),
    [
        ("slowfast_r50", {"alpha": 4, "fusion_kernel": 5}, {"SLOWFAST": {"ALPHA": 4}}, 32),
        ("i3d_nl", {"time_padding": "zeros"}, {}, 8),
    ],
    ids=["slowfast_r50_8x8_kernel5", "i3d_nl"],
)
def test_a_pyslowfast_checkpoint_loads_into_the_network_it_was(name, kwargs, cfg, frames, tmp_path):
    theirs = randomise(build(name, num_classes=400, **kwargs))
    state = as_pyslowfast(theirs.state_dict())
    for known in ("s1.pathway0_stem.conv.weight", "s2.pathway0_res0.branch1_bn.running_var"):
        assert known in state  # names as in PySlowFast's published checkpoints
    path = tmp_path / "checkpoint_epoch_00196.pyth"
    torch.save({"epoch": 196, "model_state": state, "cfg": yaml.safe_dump(cfg)}, path)

    ours = build(name, num_classes=400, pretrained=str(path)).eval()
    clip = torch.randn(1, 3, frames, 224, 224)
    with torch.no_grad():
        assert_same_logits(theirs(clip), ours(clip))
    assert read_pretrained(str(path)).normalization == PYSLOWFAST


def test_pyslowfast_cfg_gives_the_normalisation_and_alpha(tmp_path):
    small = build("slowfast_r50", num_classes=5, width=8, alpha=2, fusion_kernel=7)
    cfg = {"SLOWFAST": {"ALPHA": 2}, "DATA": {"MEAN": [0.4, 0.4, 0.4], "STD": [0.2, 0.2, 0.2]}}
    path = tmp_path / "small.pyth"
    torch.save({"model_state": as_pyslowfast(small.state_dict()), "cfg": yaml.dump(cfg)}, path)
    resolved = resolve_inputs(
        load_config(None, ["model.name=slowfast_r50", "model.width=8", f"model.pretrained={path}"])
    )
    assert (resolved.model.alpha, resolved.model.fusion_kernel) == (2, 7)
    assert (resolved.clip.mean, resolved.clip.std) == ([0.4] * 3, [0.2] * 3)


def test_the_weights_settings_are_recorded_so_a_checkpoint_rebuilds_without_them(tmp_path):
    """A run started from PyTorchVideo-layout weights records α, the lateral kernel and
    the normalisation; its checkpoint loads after the weights file is gone, into the
    same network (not the family's defaults, which would not even fit)."""
    theirs = build("slowfast_r50", num_classes=400, width=8, alpha=4, fusion_kernel=7)
    weights = tmp_path / "weights" / "pyslowfast.pyth"
    weights.parent.mkdir()
    torch.save({"model_state": as_pyslowfast(theirs.state_dict())}, weights)
    cfg = resolve_inputs(
        load_config(
            None,
            ["model.name=slowfast_r50", "model.width=8", f"model.pretrained={weights}"],
        )
    )
    assert (cfg.model.alpha, cfg.model.fusion_kernel) == (4, 7)
    assert (tuple(cfg.clip.mean), tuple(cfg.clip.std)) == (PYSLOWFAST.mean, PYSLOWFAST.std)
    model = randomise(build_model(cfg, num_classes=3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = save_checkpoint(
        tmp_path / "run" / "checkpoint",
        model=model,
        optimizer=optimizer,
        scheduler={"global_step": 0},
        epoch=1,
        cfg=cfg,
        classes=["a", "b", "c"],
        run_id="",
        metrics={},
    )
    shutil.rmtree(weights.parent)
    loaded, trained, _ = load_model(checkpoint)
    assert (trained.model.alpha, trained.clip.mean) == (4, list(PYSLOWFAST.mean))
    clip = torch.randn(1, 3, 32, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), model(clip))


def test_a_vidray_checkpoint_is_pretrained_weights_with_its_settings(tmp_path):
    cfg = resolve_inputs(
        load_config(
            None,
            ["model.name=i3d", "model.width=8", "model.time_padding=zeros", "clip.mean=[.5,.5,.5]"],
        )
    )
    model = randomise(build_model(cfg, num_classes=3))
    checkpoint = save_checkpoint(
        tmp_path / "checkpoint",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler={"global_step": 0},
        epoch=1,
        cfg=cfg,
        classes=["a", "b", "c"],
        run_id="",
        metrics={},
    )
    fine_tune = resolve_inputs(
        load_config(None, ["model.name=i3d", "model.width=8", f"model.pretrained={checkpoint}"])
    )
    assert fine_tune.model.time_padding == "zeros" and fine_tune.clip.mean == [0.5] * 3
    assert fine_tune.clip.std == list(IMAGENET.std)  # the run's own, ImageNet's by default
    ours = build_model(fine_tune, num_classes=3).eval()
    clip = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), model(clip))


@pytest.mark.parametrize(
    ("name", "kwargs"), [("mc3_18", {}), ("c3d", {"width": 8}), ("s3d", {})], ids=str
)
def test_a_vidray_checkpoint_starts_any_3d_family(name, kwargs, tmp_path):
    """A run's checkpoint (e.g. of Kinetics) is weights to fine-tune from, with a fresh
    classifier for another class count."""
    cfg = load_config(None, [f"model.name={name}", *(f"model.{k}={v}" for k, v in kwargs.items())])
    trained = randomise(build_model(cfg, num_classes=5))
    checkpoint = save_checkpoint(
        tmp_path / "checkpoint",
        model=trained,
        optimizer=torch.optim.SGD(trained.parameters(), lr=0.1),
        scheduler={"global_step": 0},
        epoch=1,
        cfg=cfg,
        classes=list("abcde"),
        run_id="",
        metrics={},
    )
    fine_tune = build(name, num_classes=3, pretrained=str(checkpoint), **kwargs)
    theirs = trained.state_dict()
    kept = [k for k, v in fine_tune.state_dict().items() if v.shape == theirs[k].shape]
    assert all(torch.equal(fine_tune.state_dict()[k], theirs[k]) for k in kept)
    assert len(kept) >= len(theirs) - 2  # all but the classifier's weight and bias


@pytest.mark.parametrize(
    ("pretrained", "mean"),
    [
        ("", None),  # nothing resolved: ImageNet's at run time, as before
        ("KINETICS400_V1", [0.43216, 0.394666, 0.37645]),  # torchvision's video weights
    ],
)
def test_torchvision_weights_give_their_own_normalisation_without_a_fetch(pretrained, mean):
    cfg = resolve_inputs(load_config(None, ["model.name=r3d_18", f"model.pretrained={pretrained}"]))
    assert cfg.clip.mean == mean


def test_a_file_that_fits_no_layout_names_a_key_with_no_place_and_a_missing_one(tmp_path):
    state = build("i3d", num_classes=4, width=8).state_dict()
    state["layer9.0.conv1.weight"] = state.pop("layer4.0.conv1.weight")
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(VidrayError) as error:
        build("i3d", num_classes=4, width=8, pretrained=str(path))
    message = str(error.value)
    assert "\n" not in message
    assert "first layer4.0.conv1.weight" in message and "first layer9.0.conv1.weight" in message


def test_another_layout_key_is_named(tmp_path):
    path = tmp_path / "pyslowfast.pyth"
    torch.save({"model_state": {"s2.pathway0_attention.weight": torch.zeros(1)}}, path)
    with pytest.raises(VidrayError, match=r"PySlowFast weight 's2.pathway0_attention.weight'"):
        build("i3d", num_classes=4, pretrained=str(path))


def test_a_detector_backbone_starts_from_a_pyslowfast_checkpoint_with_its_settings(tmp_path):
    from vidray.detect.task import Detect

    source = randomise(build("slowfast_r50", num_classes=400, width=8, alpha=4, fusion_kernel=7))
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    cfg = {"SLOWFAST": {"ALPHA": 4}}
    torch.save({"model_state": as_pyslowfast(source.state_dict()), "cfg": yaml.dump(cfg)}, path)
    cfg = resolve_inputs(
        load_config(
            None,
            [
                "train.task=detect",
                "model.name=slowfast_r50",
                "model.width=8",
                f"detection.backbone_checkpoint={path}",
            ],
        )
    )
    assert (cfg.model.alpha, cfg.model.fusion_kernel, cfg.clip.mean) == (4, 7, [0.45] * 3)
    detector = Detect().build(cfg, num_classes=3)
    backbone = detector.backbone.net.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(backbone[key], value), key
    assert detector.backbone.net.slow.layer4[0].conv2.dilation == (1, 2, 2)


def test_a_detector_trained_before_res5_was_dilated_rebuilds_without_it():
    from vidray.config import Config

    stored = load_config(None, ["train.task=detect", "model.name=slowfast_r50"]).to_dict()
    del stored["detection"]["res5_dilation"]  # as an older vidray wrote it
    assert Config.from_stored(stored).detection.res5_dilation == 1
    assert load_config(None, ["train.task=detect"]).detection.res5_dilation == 2


def test_a_pytorchvideo_key_of_no_known_kind_is_named():
    with pytest.raises(VidrayError, match=r"'blocks\.3\.attention\.weight' has no place"):
        from_pytorchvideo(
            {"blocks.0.conv.weight": torch.zeros(1), "blocks.3.attention.weight": torch.zeros(1)}
        )
