"""C3D (Tran et al. 2015, "Learning Spatiotemporal Features with 3D Convolutional Networks").

A VGG-style stack of 3×3×3 convolutions; at the paper's input, 487 classes (Sports-1M):

    clip (B, 3, 16, 112, 112)
      └─ conv1a 64                  → pool1 1×2×2     64 × 16 × 56 × 56
      └─ conv2a 128                 → pool2 2×2×2    128 ×  8 × 28 × 28
      └─ conv3a, conv3b 256         → pool3 2×2×2    256 ×  4 × 14 × 14
      └─ conv4a, conv4b 512         → pool4 2×2×2    512 ×  2 ×  7 ×  7
      └─ conv5a, conv5b 512         → pool5 2×2×2    512 ×  1 ×  4 ×  4   (7 → 4: Caffe rounds up)
      └─ flatten 8192 → fc6 4096 → fc7 4096 (ReLU + dropout each) → fc8 → logits

Every conv is 3×3×3, stride 1, padding 1, with a bias and a ReLU. ``width`` is the
channels of conv1a (64 in the paper); the other convs keep the paper's ratios to it and
fc6/fc7 have ``64 * width`` units, so width 8 is a 1.2 M-parameter model that trains on a
laptop. At the default input the network has exactly 79,991,015 parameters for 487
classes and ≈38.5 G multiply-adds (the lecture quotes 39.5 GFLOP).

``pretrained`` takes the Sports-1M weights converted from the authors' Caffe model,
in the key names of the widely used PyTorch port (``conv1``, ``conv2``, ``conv3a``
... ``fc8``), or a state_dict of this module. Pooling rounds up as Caffe does: at
pool5 the 7×7 map's windows start at 0, 2, 4 and 6, the last one a single
column. (The port pads by one instead, which gives the same size from windows at
-1, 1, 3, 5: other numbers from the same weights.)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from vidray.models.pretrained import read_pretrained
from vidray.models.registry import InputSpec, register
from vidray.models.weights import HEAD_STD, init_weights, load_pretrained

# pool5's output at the paper's input; fc6 always reads this grid (see C3D.grid).
_FC6_GRID = (1, 4, 4)


@dataclass(frozen=True)
class _Stage:
    convs: int  # 3×3×3 conv + ReLU layers, named conv{i}a, conv{i}b
    channels: int  # at width 64, the paper's
    pool: tuple[int, int, int]  # max-pool kernel and stride (T, H, W)


_STAGES = (
    # pool1 keeps time: the paper found merging frames this early hurts, and 16 frames
    # leave room for exactly four temporal halvings.
    _Stage(1, 64, (1, 2, 2)),
    _Stage(1, 128, (2, 2, 2)),
    _Stage(2, 256, (2, 2, 2)),
    _Stage(2, 512, (2, 2, 2)),
    _Stage(2, 512, (2, 2, 2)),
)
_HEAD = ("classifier.fc8.weight", "classifier.fc8.bias")


class C3D(nn.Module):
    """C3D at any width; see the module docstring for the layer table."""

    def __init__(self, *, num_classes: int, width: int, dropout: float):
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        c_in = 3
        for i, stage in enumerate(_STAGES, start=1):
            c_out = stage.channels * width // 64
            for letter in "ab"[: stage.convs]:
                layers.append((f"conv{i}{letter}", nn.Conv3d(c_in, c_out, 3, padding=1)))
                layers.append((f"relu{i}{letter}", nn.ReLU(inplace=True)))
                c_in = c_out
            # ceil_mode is Caffe's rounding (C3D's framework): pool5's 7×7 → 4×4 with the
            # windows of the original weights, and clips shorter than 16 frames get through.
            pool = nn.MaxPool3d(stage.pool, stride=stage.pool, ceil_mode=True)
            layers.append((f"pool{i}", pool))
        self.features = nn.Sequential(OrderedDict(layers))
        # Identity at 16×112×112, where pool5 already gives the 1×4×4 grid; any other clip
        # size is brought to that grid, so fc6 keeps its size (torchvision's VGG does the same).
        self.grid = nn.AdaptiveAvgPool3d(_FC6_GRID)
        fc = 64 * width
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(c_in * math.prod(_FC6_GRID), fc),
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(fc, fc),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout(dropout),
                fc8=nn.Linear(fc, num_classes),
            )
        )
        # Without batch norm, eleven layers only train from scratch with a variance-
        # keeping init (torchvision's VGG init).
        init_weights(self, linear_std=HEAD_STD)

    def forward(self, clip: Tensor) -> Tensor:
        return self.classifier(self.grid(self.features(clip)).flatten(1))


@register("c3d", paper="C3D (Tran et al. 2015)", input=InputSpec(frames=16, crop=112))
def c3d(
    *, num_classes: int, width: int = 64, dropout: float = 0.5, pretrained: str | None = None
) -> nn.Module:
    """C3D: eight 3×3×3 convs and three FC layers (Tran et al. 2015).

    Args:
        num_classes: logits per clip (487 for Sports-1M).
        width: channels of conv1a; 64 is the paper's network, 8 a CPU-sized one.
        dropout: after fc6 and after fc7 (0.5 in the paper).
        pretrained: a state_dict file, the converted Sports-1M weights (the port's key
            names) or this module's, or a vidray checkpoint; fc8 stays fresh for another
            number of classes.
    """
    model = C3D(num_classes=num_classes, width=width, dropout=dropout)
    if pretrained:
        state = _from_port(read_pretrained(pretrained).state)
        load_pretrained(model, state, source=pretrained, head=_HEAD)
    return model


def _from_port(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The port's keys (``conv1.weight``, ``conv3a.bias``, ``fc6.weight`` ...) as this
    module's (``features.conv1a.weight`` ...); other keys are kept as they are."""
    renamed = {}
    for key, value in state.items():
        layer, _, param = key.partition(".")
        if layer.startswith("conv"):
            key = f"features.{layer}a.{param}" if layer in ("conv1", "conv2") else f"features.{key}"
        elif layer.startswith("fc"):
            key = f"classifier.{key}"
        renamed[key] = value
    return renamed
