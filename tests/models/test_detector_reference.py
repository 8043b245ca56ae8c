"""vidray's AVA detector is PyTorchVideo's ``slowfast_r50_detection`` (the SlowFast R50
8×8 detector of the PyTorchVideo zoo) layer for layer: with its random weights and BN
statistics renamed in by `from_pytorchvideo`, it scores the same boxes of the same clip
alike, and only with res5 dilated by 2 as the paper's AVA detector has it.

Both read the same frames (PyTorchVideo's slow pathway is handed its own ``PackPathway``
selection, linspace(0, T-1, T/α)) and boxes as (batch index, x1, y1, x2, y2) in input
pixels. PyTorchVideo's RoIAlign is torchvision's legacy ``aligned=False``, vidray's the
``aligned`` one PySlowFast trains with: the same place on the map is a box of
PyTorchVideo's shifted by half a map cell (8 input pixels) here. The two agree exactly
for boxes of at least one cell (16 px) a side; a smaller one is stretched to one cell by
``aligned=False``."""

from __future__ import annotations

import pytest
import torch
from reference import randomise

from vidray.models.converted import from_pytorchvideo
from vidray.models.detector import ActionDetector, build_detector, load_backbone_weights

hub = pytest.importorskip("pytorchvideo.models.hub")

pytestmark = pytest.mark.slow  # a full-size SlowFast R50 three times on CPU

FRAMES, ALPHA, SIDE = 32, 4, 80  # the hub's 8×8 setting, on a 5×5 map at stride 16
HALF_CELL = 8.0
BOXES = torch.tensor(  # every side >= 16 px
    [
        [0, 4.0, 6.5, 60.0, 76.0],
        [0, 30.25, 0.0, 80.0, 41.5],
        [0, 0.0, 0.0, 80.0, 80.0],
        [0, 17.0, 22.0, 45.0, 70.0],
    ]
)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """PyTorchVideo's detector, randomised: its state dict, a clip, its logits and scores."""
    torch.manual_seed(0)  # PyTorchVideo's own initialisation of the convs
    net = randomise(hub.slowfast_r50_detection(pretrained=False))
    clip = torch.randn(1, 3, FRAMES, SIDE, SIDE)
    slow = clip.index_select(2, torch.linspace(0, FRAMES - 1, FRAMES // ALPHA).long())
    logits = []
    net.detection_head.proj.register_forward_hook(lambda _m, _i, out: logits.append(out))
    with torch.no_grad():
        # The network's forward, in its two steps: features of the clip, then the head
        # (ending in a sigmoid) on the boxes. Random BN statistics make logits of tens:
        # scaled to a few units, the scores stay off 0 and 1, where the sigmoid would
        # flatten any difference.
        features = net.model([slow, clip])
        net.detection_head(features, BOXES)
        net.detection_head.proj.weight.mul_(2 / logits.pop().std())
        scores = net.detection_head(features, BOXES).reshape(len(BOXES), -1)
    return {
        "state": net.state_dict(),
        "clip": clip,
        "logits": logits.pop().reshape(len(BOXES), -1),
        "scores": scores,
    }


def _ours(state: dict[str, torch.Tensor], **kwargs: object) -> ActionDetector:
    detector = build_detector(
        "slowfast_r50", num_classes=80, alpha=ALPHA, fusion_kernel=7, **kwargs
    )
    weights = from_pytorchvideo(state)
    load_backbone_weights(detector.backbone.net, weights, head="head", source="reference")
    detector.fc.load_state_dict(
        {"weight": weights["head.fc.weight"], "bias": weights["head.fc.bias"]}
    )
    return detector.eval()


def _boxes_here() -> torch.Tensor:
    boxes = BOXES.clone()
    boxes[:, 1:] += HALF_CELL
    return boxes


def test_the_detector_scores_boxes_as_pytorchvideos_slowfast_r50_detection(reference):
    ours = _ours(reference["state"])
    with torch.no_grad():
        logits = ours(reference["clip"], _boxes_here())
    scores = torch.sigmoid(logits)
    expected = reference["scores"]
    # Most scores where the sigmoid still shows a difference in the logits.
    assert ((expected > 0.01) & (expected < 0.99)).float().mean() > 0.8
    print(f"max |score difference| {(scores - expected).abs().max():.2e}")
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)
    scale = reference["logits"].abs().max()
    torch.testing.assert_close(logits / scale, reference["logits"] / scale, rtol=0, atol=1e-5)


def test_without_res5_dilation_the_same_weights_score_boxes_otherwise(reference):
    undilated = _ours(reference["state"], res5_dilation=1)
    with torch.no_grad():
        scores = undilated.predict(reference["clip"], _boxes_here())
    difference = (scores - reference["scores"]).abs().max()
    print(f"max |score difference| without dilation {difference:.2f}")
    assert difference > 0.1
