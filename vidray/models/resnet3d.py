"""The 3D ResNets of Tran et al. 2018 ("A Closer Look at Spatiotemporal Convolutions for
Action Recognition"): R3D, MC3 and R(2+1)D, built on torchvision's generic ``VideoResNet``.

    clip (B, 3, 16, 112, 112)
      └─ stem    conv 3×7×7, stride 1×2×2 (R(2+1)D: 1×7×7 then 3×1×1)    w   × 16 × 56 × 56
      └─ layer1  basic blocks                                             w   × 16 × 56 × 56
      └─ layer2  basic blocks, first one strided 2                        2w  ×  8 × 28 × 28
      └─ layer3  basic blocks, first one strided 2                        4w  ×  4 × 14 × 14
      └─ layer4  basic blocks, first one strided 2                        8w  ×  2 ×  7 ×  7
      └─ global average pool → dropout → fc → logits

The three variants differ only in data handed to ``VideoResNet``: the conv each stage's
blocks use and the stem.

    r3d_18       3×3×3 convs in every stage
    mc3_18       3×3×3 in layer1, 1×3×3 (no time) in layers 2-4: "mixed convolutions";
                 its strides are then 1×2×2, so time stays at 16 steps to the top
    r2plus1d_18  every 3×3×3 factored into 1×3×3 → BN, ReLU → 3×1×1, with the middle
                 width chosen to keep the 3×3×3 conv's parameter count

``width`` is the stem's channels (64 in the paper, the network torchvision builds, whose
Kinetics-400 weights load into it); ``depth`` picks the blocks per stage (10: 1-1-1-1,
18: 2-2-2-2, 34: 3-4-6-3). ``pretrained`` is a local state_dict file or the name of
torchvision's Kinetics-400 weights (downloaded once per machine); a checkpoint for another
number of classes loads everything but ``fc``, which is how Kinetics-400 weights are
fine-tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.video import MC3_18_Weights, R2Plus1D_18_Weights, R3D_18_Weights
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
    VideoResNet,
)

from vidray.errors import VidrayError
from vidray.models.pretrained import read_pretrained
from vidray.models.registry import InputSpec, register
from vidray.models.weights import load_pretrained

ConvMaker = type[Conv3DSimple | Conv3DNoTemporal | Conv2Plus1D]

_DEPTHS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
_HEAD = ("fc.weight", "fc.bias")
_INPUT = InputSpec(frames=16, crop=112)  # torchvision's Kinetics recipe: 16 frames, 112² crops


def _stem(width: int) -> nn.Sequential:
    """torchvision's ``BasicStem`` with ``width`` output channels."""
    return nn.Sequential(
        nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def _stem_2plus1d(width: int) -> nn.Sequential:
    """torchvision's ``R2Plus1dStem`` (45 middle channels at width 64) at ``width``."""
    mid = 45 * width // 64
    return nn.Sequential(
        nn.Conv3d(3, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class _Variant:
    conv_makers: tuple[ConvMaker, ...]  # the conv of each of the four stages
    stem: Callable[[int], nn.Module]  # width -> stem
    weights: type[WeightsEnum]  # torchvision's Kinetics-400 weights for this variant


_VARIANTS = {
    "r3d_18": _Variant((Conv3DSimple,) * 4, _stem, R3D_18_Weights),
    "mc3_18": _Variant((Conv3DSimple,) + (Conv3DNoTemporal,) * 3, _stem, MC3_18_Weights),
    "r2plus1d_18": _Variant((Conv2Plus1D,) * 4, _stem_2plus1d, R2Plus1D_18_Weights),
}


class ScaledVideoResNet(VideoResNet):
    """torchvision's ``VideoResNet`` with stage widths w, 2w, 4w, 8w instead of 64 … 512.

    torchvision asks ``_make_layer`` for 64·2^i channels; this class scales each request by
    width/64 and leaves the blocks, downsampling and init to torchvision, so at width 64 the
    network and its state_dict keys are exactly torchvision's.
    """

    def __init__(
        self,
        *,
        conv_makers: Sequence[ConvMaker],
        layers: list[int],
        stem: Callable[[int], nn.Module],
        width: int,
        num_classes: int,
        dropout: float,
    ):
        self.width = width  # read by _make_layer while VideoResNet.__init__ runs
        super().__init__(BasicBlock, conv_makers, layers, lambda: stem(width), num_classes)
        # Dropout sits inside `avgpool` so the state_dict keys (and torchvision's weights) stay.
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Dropout(dropout))
        self.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)  # torchvision's init for its fc
        nn.init.zeros_(self.fc.bias)

    def _make_layer(
        self,
        block: type[BasicBlock],
        conv_builder: ConvMaker,
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        # torchvision keeps `inplanes` in its own units (a 64-channel stem): convert around
        # the call so that both the stage's input and output channels are scaled.
        self.inplanes = self.inplanes * self.width // 64
        layer = super()._make_layer(block, conv_builder, planes * self.width // 64, blocks, stride)
        self.inplanes = planes * block.expansion
        return layer


def _build(
    name: str, num_classes: int, depth: int, width: int, dropout: float, pretrained: str | None
) -> nn.Module:
    if depth not in _DEPTHS:
        raise VidrayError(
            f"{name}: depth must be one of {', '.join(map(str, _DEPTHS))}, got {depth}"
        )
    variant = _VARIANTS[name]
    model = ScaledVideoResNet(
        conv_makers=variant.conv_makers,
        layers=_DEPTHS[depth],
        stem=variant.stem,
        width=width,
        num_classes=num_classes,
        dropout=dropout,
    )
    if pretrained is not None:
        state = read_pretrained(pretrained, enum=variant.weights).state
        load_pretrained(model, state, source=pretrained, head=_HEAD)
    return model


@register("r3d_18", paper="R3D-18 (Tran et al. 2018)", input=_INPUT, weights=R3D_18_Weights)
def r3d_18(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = 64,
    dropout: float = 0.0,
    pretrained: str | None = None,
) -> nn.Module:
    """R3D: a ResNet with 3×3×3 convs throughout (Tran et al. 2018).

    Args:
        num_classes: logits per clip (400 for Kinetics-400).
        depth: 10, 18 (the paper's R3D-18) or 34 layers.
        width: stem channels; 64 is the paper's network, 8 a CPU-sized one.
        dropout: before fc (torchvision's network has none: 0).
        pretrained: a state_dict file, a vidray checkpoint, or torchvision's weights by name
            (``R3D_18_Weights.KINETICS400_V1``, or just ``KINETICS400_V1``); needs width 64
            and depth 18.
    """
    return _build("r3d_18", num_classes, depth, width, dropout, pretrained)


@register("mc3_18", paper="MC3-18 (Tran et al. 2018)", input=_INPUT, weights=MC3_18_Weights)
def mc3_18(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = 64,
    dropout: float = 0.0,
    pretrained: str | None = None,
) -> nn.Module:
    """MC3: 3D convs in the stem and layer1, 2D (1×3×3) ones above (Tran et al. 2018).

    Arguments as for ``r3d_18``; ``pretrained`` names ``MC3_18_Weights``.
    """
    return _build("mc3_18", num_classes, depth, width, dropout, pretrained)


@register(
    "r2plus1d_18", paper="R(2+1)D-18 (Tran et al. 2018)", input=_INPUT, weights=R2Plus1D_18_Weights
)
def r2plus1d_18(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = 64,
    dropout: float = 0.0,
    pretrained: str | None = None,
) -> nn.Module:
    """R(2+1)D: every 3×3×3 conv split into a spatial 1×3×3 and a temporal 3×1×1 (Tran et al.
    2018).

    Arguments as for ``r3d_18``; ``pretrained`` names ``R2Plus1D_18_Weights``.
    """
    return _build("r2plus1d_18", num_classes, depth, width, dropout, pretrained)
