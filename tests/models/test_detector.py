"""AVA-style detector: per-box logits from RoIAlign on a stride-16 backbone map, weights
taken from a classification checkpoint, the paper's backbone size."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from untrained import save_untrained

from vidray.config import Config
from vidray.errors import VidrayError
from vidray.models import build
from vidray.models.detector import (
    ActionDetector,
    BackboneFeatures,
    build_detector,
    detector_backbone,
)
from vidray.models.flops import count_params

SMALL_SLOWFAST = {"width": 8, "alpha": 4}  # fast pathway width 1, slow pathway 2 of 8 frames
CLIPS = (3, 3, 8, 64, 64)  # B, C, T, H, W: a 4×4 map at stride 16
BOXES = torch.tensor(
    [
        [0, 0.0, 0.0, 32.0, 32.0],
        [0, 20.0, 8.0, 63.0, 60.0],
        [1, 5.5, 10.0, 40.0, 64.0],
        [2, 0.0, 0.0, 64.0, 64.0],
        [2, 40.0, 30.0, 50.0, 50.0],
    ]
)


def small_detector(num_classes: int = 6, **kwargs: object) -> ActionDetector:
    torch.manual_seed(0)
    return build_detector("slowfast_r50", num_classes=num_classes, **SMALL_SLOWFAST, **kwargs)


def test_logits_have_one_row_per_box_over_several_clips_and_scores_are_their_sigmoid():
    detector = small_detector().eval()
    clips = torch.randn(CLIPS)
    logits = detector(clips, BOXES)
    assert logits.shape == (len(BOXES), 6)
    torch.testing.assert_close(detector.predict(clips, BOXES), torch.sigmoid(logits))


def test_a_clip_without_boxes_gives_no_rows():
    detector = small_detector()
    assert detector(torch.randn(CLIPS), torch.empty(0, 5)).shape == (0, 6)


def test_a_boxs_logits_depend_only_on_its_own_clip():
    detector = small_detector().eval()  # batch statistics would mix the clips
    clips = torch.randn(CLIPS)
    order = torch.tensor([2, 0, 1])  # new clip i is old clip order[i]
    moved = BOXES.clone()
    moved[:, 0] = torch.argsort(order)[BOXES[:, 0].long()].float()
    with torch.no_grad():
        torch.testing.assert_close(detector(clips[order], moved), detector(clips, BOXES))


@pytest.mark.parametrize("stride", [16, 32])
def test_roi_align_reads_boxes_in_input_pixels_at_the_measured_stride(stride):
    # A backbone whose map cell (i, j) sees exactly input pixels [i·s, (i+1)·s) × [j·s, ...):
    # a change inside one cell reaches only boxes whose bins interpolate from that cell.
    patches = nn.Conv3d(3, 4, (1, stride, stride), stride=(1, stride, stride))
    features = BackboneFeatures(patches, lambda net, clip: (net(clip),))
    detector = ActionDetector(features, num_classes=3, frames=1).eval()
    assert detector.spatial_scale == 1 / stride
    clips = torch.randn(2, 3, 1, 128, 128)
    changed = clips.clone()
    changed[0, :, :, -stride:, -stride:] += 1.0  # the bottom-right cell of clip 0
    over_it = [0, 128.0 - stride, 128.0 - stride, 128.0, 128.0]
    # The top-left 48² px: its bins interpolate between map cells 0..1 (stride 32) or
    # 0..3 (stride 16), never the changed last one (3 of 0..3, or 7 of 0..7).
    elsewhere = [0, 0.0, 0.0, 48.0, 48.0]
    boxes = torch.tensor([over_it, elsewhere, [1, *over_it[1:]]])
    with torch.no_grad():
        before, after = detector(clips, boxes), detector(changed, boxes)
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1:], after[1:])


@pytest.mark.parametrize(
    ("name", "kwargs", "channels"),
    [("slowfast_r50", SMALL_SLOWFAST, 8 * 32 + 1 * 32), ("i3d", {"width": 8}, 8 * 32)],
)
def test_the_backbones_last_stage_keeps_one_sixteenth_of_the_input(name, kwargs, channels):
    clips = torch.randn(1, 3, 8, 64, 64)
    detector = build_detector(name, num_classes=2, **kwargs)
    assert detector.spatial_scale == 1 / 16
    assert detector.backbone(clips).shape == (1, channels, 4, 4)
    net = detector.backbone.net
    res5_convs = [m for n, m in net.named_modules() if n.endswith("layer4.0.conv2")]
    assert res5_convs and all(conv.dilation == (1, 2, 2) for conv in res5_convs)
    # The classification net of the same family stops at 1/32.
    classifier = build(name, num_classes=2, **kwargs)
    maps = classifier.features(clips)
    assert all(m.shape[-2:] == (2, 2) for m in (maps if isinstance(maps, tuple) else [maps]))


def test_an_explicit_res5_stride_2_moves_the_roi_scale_to_one_thirty_second():
    assert small_detector(res5_stride=2).spatial_scale == 1 / 32


def test_a_gradient_reaches_every_backbone_weight():
    detector = small_detector()
    detector(torch.randn(CLIPS), BOXES).sum().backward()
    assert all(p.grad is not None for p in detector.backbone.parameters())
    assert detector.backbone.net.slow.stem.conv.weight.grad.abs().sum() > 0
    assert detector.backbone.net.fast.stem.conv.weight.grad.abs().sum() > 0


def test_binary_cross_entropy_on_multi_hot_targets_falls_with_sgd():
    detector = small_detector(dropout=0.0)
    clips = torch.randn(CLIPS)
    targets = torch.zeros(len(BOXES), 6)
    targets[[0, 0, 1, 2, 3, 3, 4], [0, 3, 1, 5, 0, 2, 4]] = 1.0  # several actions per box
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01)
    losses = []
    for _ in range(10):
        loss = loss_fn(detector(clips, BOXES), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_slowfast_r50_ava_backbone_is_the_kinetics_classifier_without_its_head():
    with torch.device("meta"):
        classifier = build("slowfast_r50", num_classes=400)
        detector = build_detector("slowfast_r50", num_classes=80)
    head = count_params(classifier.head)
    assert head == (2048 + 256) * 400 + 400
    # tests/models/test_slowfast.py pins the 400-class 4×16 classifier at 34.48 M.
    assert count_params(detector.backbone) == count_params(classifier) - head
    assert count_params(detector.backbone) == pytest.approx(34.48e6 - head, rel=0.03)
    assert detector.fc.in_features == 2048 + 256


def _kinetics_classifier() -> nn.Module:
    torch.manual_seed(1)
    return build("slowfast_r50", num_classes=7, **SMALL_SLOWFAST)  # res5 stride 2, as trained


def _assert_backbone_holds(detector: ActionDetector, classifier: nn.Module) -> None:
    loaded = detector.backbone.net.state_dict()
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_saved_state_dict_loads_into_the_backbone_without_its_head(tmp_path):
    classifier = _kinetics_classifier()
    path = tmp_path / "kinetics.pt"
    torch.save(classifier.state_dict(), path)
    detector = small_detector(pretrained_backbone=str(path))
    _assert_backbone_holds(detector, classifier)


def test_a_vidray_training_checkpoint_loads_into_the_backbone(tmp_path):
    classifier = _kinetics_classifier()
    classes = [f"action{i}" for i in range(7)]
    directory = save_untrained(tmp_path / "checkpoint", classifier, Config(), classes)
    detector = small_detector(pretrained_backbone=str(directory))
    _assert_backbone_holds(detector, classifier)


def test_weights_of_another_width_are_a_one_line_error(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(build("slowfast_r50", num_classes=7, width=16, alpha=4).state_dict(), path)
    with pytest.raises(
        VidrayError, match=r"wide\.pt: weight '[\w.]+' has shape .+ the backbone needs"
    ):
        small_detector(pretrained_backbone=str(path))


def test_a_family_without_a_detector_entry_is_a_one_line_error():
    with pytest.raises(VidrayError, match=r"'r3d_18' cannot serve as a detector backbone"):
        build_detector("r3d_18", num_classes=3)


def test_boxes_without_a_batch_index_are_refused():
    with pytest.raises(ValueError, match=r"boxes must be \(K, 5\)"):
        small_detector()(torch.randn(CLIPS), BOXES[:, 1:])


@pytest.mark.parametrize("name", ["slowfast_r50", "slowfast_r101", "i3d", "i3d_nl"])
def test_every_backbone_runs_res5_at_stride_1_with_its_3x3_convs_dilated_by_2(name):
    with torch.device("meta"):  # the net build_detector builds, without its shape probe
        net = build(name, num_classes=1, **detector_backbone(name).dense)
    spatial = {n: m for n, m in net.named_modules() if n.endswith("conv2")}  # each 1×3×3
    res5 = {n: m for n, m in spatial.items() if "layer4." in n}
    assert res5 and len(res5) < len(spatial)
    for n, conv in spatial.items():
        dilated = n in res5
        assert conv.dilation == ((1, 2, 2) if dilated else (1, 1, 1)), n
        assert conv.padding[1:] == ((2, 2) if dilated else (1, 1)), n  # the map keeps its size
        assert conv.stride == (1, 1, 1) or not dilated, n


def test_a_res5_dilation_below_1_is_a_one_line_error():
    with pytest.raises(VidrayError, match=r"^res5_dilation must be >= 1, got 0$"):
        small_detector(res5_dilation=0)
