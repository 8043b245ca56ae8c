"""AVA-style spatio-temporal action detection: a RoI head on any 3D backbone of the zoo.

Gu et al., "AVA", CVPR 2018, and the detector of the SlowFast paper (Feichtenhofer et
al. 2019, sec. 5): person boxes come from an off-the-shelf detector, and each box is
classified from the clip's last feature map, as in Faster R-CNN's second stage:

    clips (B, 3, T, H, W)                            boxes (K, 5): batch index, x1, y1, x2, y2
      └─ backbone   a zoo family, res5 at stride 1, dilation 2, no head    in input pixels
                    SlowFast R50: slow (B, 2048, T/α, H/16, W/16)               │
                                  fast (B,  256, T,   H/16, W/16)               │
      └─ average each map over time, concatenate channels  (B, 2304, H/16, W/16)
      └─ RoIAlign 7×7 per box, scale 1/16, aligned   ◄──────────────────────────┘
                                                       (K, 2304, 7, 7)
      └─ max pool over the 7×7                         (K, 2304)
      └─ dropout 0.5 → fc                              (K, num_classes) logits

The logits are multi-label (a person can stand, talk and watch at once): train with
`nn.BCEWithLogitsLoss` on multi-hot targets; `ActionDetector.predict` gives the
per-class sigmoid scores.

Which families can serve is data (`BACKBONES`): how to read a net's last maps, the
builder arguments that keep its last stage at 1/16 resolution, and the name of its
classification head, which the detector drops. Those arguments are the paper's: res5's
spatial stride set to 1 (instead of 2) and a dilation of 2 for its filters, so res5's
3×3 convs span on the denser map what they spanned in the Kinetics network
(PySlowFast's `SPATIAL_DILATIONS` [[1, 1], [1, 1], [1, 1], [2, 2]]; PyTorchVideo's
`create_slowfast_with_roi_head`, dilation (1, 2, 2) on every res5 block's conv_b).
Dilation has no weights: a Kinetics backbone loads as it is, but without it the
same weights score boxes differently. The RoIAlign scale is not written down
anywhere: it is measured from the built net by one shape-only pass.

RoIAlign is `aligned` (a pixel's centre at +0.5), as PySlowFast trains its AVA
detectors (`DETECTION.ALIGNED`, detectron2's ROIAlign). PyTorchVideo's hub detector
builds torchvision's RoIAlign with its legacy default (`aligned=False`), which reads
every box half a map cell (8 input pixels) further down and right: the same
weights give its scores here for each box shifted by +8 pixels
(`tests/models/test_detector_reference.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torchvision.ops import roi_align

from vidray.errors import VidrayError
from vidray.models.pretrained import read_pretrained
from vidray.models.registry import build, entry
from vidray.models.weights import HEAD_STD, init_weights

FeatureMaps = Callable[[nn.Module, Tensor], Sequence[Tensor]]

# The probe clip's side: a multiple of every total stride in the zoo (16, 32), so the
# map's side divides it exactly and their ratio is the stride itself.
PROBE_SIZE = 512


def pathway_maps(net: nn.Module, clip: Tensor) -> Sequence[Tensor]:
    """SlowFast: the slow and the fast pathway's last maps."""
    return net.features(clip)


def single_map(net: nn.Module, clip: Tensor) -> Sequence[Tensor]:
    """One-pathway trunks (I3D, I3D + non-local): the map after res5."""
    return (net.features(clip),)


@dataclass(frozen=True)
class DetectorBackbone:
    """How a registered family serves as a detector backbone.

    `feature_maps(net, clip)` gives the net's last maps, (B, C_i, T_i, H', W') each.
    `dense` are the builder's arguments that keep the last stage at spatial stride 1
    with its convs dilated by 2, as the SlowFast paper's AVA detector (module docstring).
    `head` names the classification head: dropped from the backbone, and its weights
    ignored when a classification checkpoint is loaded.
    """

    feature_maps: FeatureMaps
    dense: Mapping[str, object] = field(
        default_factory=lambda: {"res5_stride": 1, "res5_dilation": 2}
    )
    head: str = "head"


# Slow-only: the zoo's I3D is the one-pathway 3D ResNet that serves here.
BACKBONES: dict[str, DetectorBackbone] = {
    "slowfast_r50": DetectorBackbone(pathway_maps),
    "slowfast_r101": DetectorBackbone(pathway_maps),
    "i3d": DetectorBackbone(single_map),
    "i3d_nl": DetectorBackbone(single_map),
    # The CPU demo's 3D CNN (total stride 16, no stride knob): the detector tests and
    # configs/train/ava_demo.yaml train in minutes on it.
    "simple3d": DetectorBackbone(single_map, dense={}, head="fc"),
}


def detector_backbone(name: str) -> DetectorBackbone:
    if name not in BACKBONES:
        raise VidrayError(
            f"model {name!r} cannot serve as a detector backbone; available: "
            f"{', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name]


class BackboneFeatures(nn.Module):
    """A backbone's last maps, each averaged over time, concatenated: (B, C, H', W').

    Averaging before the channel concatenation lets pathways of different frame rates
    (SlowFast's T/α and T) meet on one 2D map that RoIAlign reads.
    """

    def __init__(self, net: nn.Module, feature_maps: FeatureMaps):
        super().__init__()
        self.net = net
        self.feature_maps = feature_maps

    def forward(self, clips: Tensor) -> Tensor:
        return torch.cat([m.mean(dim=2) for m in self.feature_maps(self.net, clips)], dim=1)

    def geometry(self, frames: int) -> tuple[int, float]:
        """(channels, spatial scale = 1 / total stride) of the map, from a shape-only pass.

        The pass runs on the meta device with the weights swapped for empty stand-ins, so
        it costs nothing and leaves the real weights and BN statistics untouched.
        """
        real = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        on_meta = {k: torch.empty_like(v, device="meta") for k, v in real.items()}
        clip = torch.empty(1, 3, frames, PROBE_SIZE, PROBE_SIZE, device="meta")
        _, channels, height, width = functional_call(self, on_meta, (clip,)).shape
        if height != width or PROBE_SIZE % width:
            raise ValueError(f"the backbone's map of a {PROBE_SIZE}² clip is {height}×{width}")
        return channels, width / PROBE_SIZE


class ActionDetector(nn.Module):
    """Per-box multi-label action logits from a clip's backbone features (module docstring)."""

    def __init__(
        self,
        features: BackboneFeatures,
        *,
        num_classes: int,
        frames: int,
        roi_size: int = 7,
        dropout: float = 0.5,
    ):
        """`frames` is a clip length the backbone takes, for the shape-only probe."""
        super().__init__()
        self.backbone = features
        channels, self.spatial_scale = features.geometry(frames)
        self.roi_size = roi_size
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self.fc, linear_std=HEAD_STD)

    def roi_features(self, clips: Tensor, boxes: Tensor) -> Tensor:
        """(K, C): RoIAlign of each box on its own clip's map, max-pooled over the bins.

        `boxes` is (K, 5) = (batch index, x1, y1, x2, y2) in input pixels, torchvision's
        RoI format; `aligned` puts pixel centres at +0.5, so a box's edges are pixel edges.
        """
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"boxes must be (K, 5) = (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}"
            )
        feature_map = self.backbone(clips)
        rois = roi_align(
            feature_map,
            boxes.to(feature_map.dtype),
            output_size=self.roi_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=0,  # adaptive: ceil(box size / bins) samples per bin
            aligned=True,
        )
        return rois.amax(dim=(2, 3))

    def forward(self, clips: Tensor, boxes: Tensor) -> Tensor:
        """(K, num_classes) logits, one row per box, in the order of `boxes`."""
        return self.fc(self.dropout(self.roi_features(clips, boxes)))

    @torch.no_grad()
    def predict(self, clips: Tensor, boxes: Tensor) -> Tensor:
        """(K, num_classes) independent per-class scores in [0, 1] (call `.eval()` first)."""
        return torch.sigmoid(self(clips, boxes))


def load_backbone_weights(
    net: nn.Module, weights: Mapping[str, Tensor], *, head: str, source: str
) -> None:
    """Load a classification net's `weights` into `net`, skipping its `head`.

    Anything else that does not fit (another family, depth or width) is a one-line
    `VidrayError` naming `source` and the first misfit. The spatial stride of res5 has
    no weights, so a Kinetics model trained at stride 2 loads into the stride-1 backbone.
    """
    kept = {k: v for k, v in weights.items() if not k.startswith(f"{head}.")}
    target = net.state_dict()
    missing = [k for k in target if k not in kept]
    if missing:
        raise VidrayError(f"{source}: no weight for {missing[0]!r} (another model or depth?)")
    unknown = [k for k in kept if k not in target]
    if unknown:
        raise VidrayError(f"{source}: weight {unknown[0]!r} has no place in the backbone")
    for key, value in kept.items():
        if value.shape != target[key].shape:
            raise VidrayError(
                f"{source}: weight {key!r} has shape {tuple(value.shape)}, the backbone needs "
                f"{tuple(target[key].shape)} (another width?)"
            )
    net.load_state_dict(kept)


def build_detector(
    backbone: str,
    *,
    num_classes: int,
    pretrained_backbone: str = "",
    roi_size: int = 7,
    dropout: float = 0.5,
    **backbone_kwargs: object,
) -> ActionDetector:
    """An AVA-style action detector (module docstring) on the zoo family `backbone`.

    `num_classes`: action classes (AVA evaluates 60 of its 80). `pretrained_backbone`:
    weights of the same family and arguments as `vidray.models.pretrained` reads them
    (a vidray checkpoint directory, PyTorchVideo's or PySlowFast's files, a state_dict);
    their classification or detection head is ignored. `roi_size`:
    RoIAlign output bins per side (7). `dropout`: before the fc (0.5). The rest goes
    to the family's builder (`width`, `alpha`, ...); the last stage's spatial stride is
    1 and its dilation 2 unless `res5_stride` or `res5_dilation` is given.
    """
    family = detector_backbone(backbone)
    if num_classes < 1:
        raise VidrayError(f"num_classes must be >= 1, got {num_classes}")
    if roi_size < 1:
        raise VidrayError(f"roi_size must be >= 1, got {roi_size}")
    if not 0 <= dropout < 1:
        raise VidrayError(f"dropout must be in [0, 1), got {dropout}")
    # The classification head is built only to be dropped: its class count is moot.
    net = build(backbone, num_classes=1, **{**family.dense, **backbone_kwargs})
    delattr(net, family.head)
    if pretrained_backbone:
        weights = read_pretrained(pretrained_backbone).state
        load_backbone_weights(net, weights, head=family.head, source=pretrained_backbone)
    return ActionDetector(
        BackboneFeatures(net, family.feature_maps),
        num_classes=num_classes,
        frames=entry(backbone).input.frames,
        roi_size=roi_size,
        dropout=dropout,
    )
