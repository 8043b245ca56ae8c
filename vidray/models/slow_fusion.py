"""Slow fusion (Karpathy et al. 2014, "Large-scale Video Classification with CNNs").

The paper's AlexNet-like network C(96,11,3)-N-P-C(256,5,1)-N-P-C(384,3,1)-C(384,3,1)-
C(256,3,1)-P-FC(4096)-FC(4096), with its first three convs extended in time as 3D
convolutions (Ji et al. 2010) that are *valid* in time: each layer fuses a few steps of the
layer below, so the temporal extent grows layer by layer until the top sees the whole clip.
At the paper's input (10 frames, resized to 200×200 and cropped to 170×170):

    layer  conv (C, T×H×W kernel, stride, pad)       then            output       frames seen
    conv1   96, 4×11×11, (2, 3, 3), (0, 0, 0)   ReLU, LRN, pool    96×4×27×27       4
    conv2  256, 2× 5× 5, (2, 1, 1), (0, 2, 2)   ReLU, LRN, pool   256×2×13×13       6
    conv3  384, 2× 3× 3, (2, 1, 1), (0, 1, 1)   ReLU              384×1×13×13      10
    conv4  384, 1× 3× 3, (1, 1, 1), (0, 1, 1)   ReLU              384×1×13×13      10
    conv5  256, 1× 3× 3, (1, 1, 1), (0, 1, 1)   ReLU, pool        256×1× 6× 6      10
    flatten 9216 → dropout → fc6 4096 → dropout → fc7 4096 (ReLU each) → fc8 → logits

Frames seen by one output step: e_l = e_{l-1} + (k_l - 1)·j_{l-1}, with the jump between
steps j_l = j_{l-1}·s_l (e_0 = j_0 = 1). Pools are the paper's non-overlapping 2×2 in
space; LRN is Krizhevsky's with the paper's k=2, n=5, α=1e-4, β=0.5. The paper does not
give the spatial padding: AlexNet's (2 for 5×5, 1 for 3×3) is used, which gives AlexNet's
256×6×6 input to fc6. ``width`` is conv1's channels (96 in the paper); the other layers keep
the paper's ratios to it, fc6/fc7 included.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.registry import InputSpec, register

# conv5's pooled output at the paper's input; fc6 always reads this grid (see SlowFusion.grid).
_FC6_GRID = (1, 6, 6)
_FC = 4096  # fc6/fc7 units at width 96


@dataclass(frozen=True)
class _Conv:
    channels: int  # at width 96, the paper's
    kernel: tuple[int, int, int]  # (T, H, W)
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]  # never in time: temporal convs are valid
    norm: bool = False  # local response normalization after the ReLU
    pool: bool = False  # 2×2 spatial max-pool last


_LAYERS = (
    _Conv(96, (4, 11, 11), (2, 3, 3), (0, 0, 0), norm=True, pool=True),
    _Conv(256, (2, 5, 5), (2, 1, 1), (0, 2, 2), norm=True, pool=True),
    _Conv(384, (2, 3, 3), (2, 1, 1), (0, 1, 1)),
    _Conv(384, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    _Conv(256, (1, 3, 3), (1, 1, 1), (0, 1, 1), pool=True),
)


def _frames_seen(layers: Sequence[_Conv]) -> int:
    """Frames one output step of the top layer sees; with valid temporal convs this is also
    the shortest clip the stack accepts."""
    extent, jump = 1, 1
    for layer in layers:
        extent += (layer.kernel[0] - 1) * jump
        jump *= layer.stride[0]
    return extent


def _block(c_in: int, c_out: int, layer: _Conv) -> nn.Sequential:
    modules: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, layer.kernel, stride=layer.stride, padding=layer.padding),
        nn.ReLU(inplace=True),
    ]
    if layer.norm:
        # PyTorch divides alpha by the window size n; Krizhevsky's formula does not.
        modules.append(nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.5, k=2.0))
    if layer.pool:
        modules.append(nn.MaxPool3d((1, 2, 2)))
    return nn.Sequential(*modules)


class SlowFusion(nn.Module):
    """The slow-fusion network at any width; see the module docstring for the layer table."""

    def __init__(self, *, num_classes: int, width: int, dropout: float):
        super().__init__()
        blocks: list[tuple[str, nn.Module]] = []
        c_in = 3
        for i, layer in enumerate(_LAYERS, start=1):
            c_out = layer.channels * width // 96
            blocks.append((f"conv{i}", _block(c_in, c_out, layer)))
            c_in = c_out
        self.features = nn.Sequential(OrderedDict(blocks))
        self.min_frames = _frames_seen(_LAYERS)
        # Identity at 10×170×170, where conv5's pool already gives 1×6×6; other clip sizes
        # are brought to that grid so fc6 keeps its size (torchvision's AlexNet does the same).
        self.grid = nn.AdaptiveAvgPool3d(_FC6_GRID)
        fc = _FC * width // 96
        # Default PyTorch init, as torchvision's AlexNet: LRN keeps these activations in range.
        self.classifier = nn.Sequential(
            OrderedDict(
                drop6=nn.Dropout(dropout),
                fc6=nn.Linear(c_in * math.prod(_FC6_GRID), fc),
                relu6=nn.ReLU(inplace=True),
                drop7=nn.Dropout(dropout),
                fc7=nn.Linear(fc, fc),
                relu7=nn.ReLU(inplace=True),
                fc8=nn.Linear(fc, num_classes),
            )
        )

    def forward(self, clip: Tensor) -> Tensor:
        if clip.shape[2] < self.min_frames:
            raise VidrayError(
                f"slow_fusion needs clips of at least {self.min_frames} frames (its temporal "
                f"extent), got T={clip.shape[2]}; set clip.T >= {self.min_frames}"
            )
        return self.classifier(self.grid(self.features(clip)).flatten(1))


@register(
    "slow_fusion",
    paper="Slow fusion (Karpathy et al. 2014)",
    input=InputSpec(frames=10, crop=170),
)
def slow_fusion(*, num_classes: int, width: int = 96, dropout: float = 0.5) -> nn.Module:
    """Slow fusion: an AlexNet-like 3D CNN whose temporal extent grows to the whole clip.

    Args:
        num_classes: logits per clip (487 for Sports-1M).
        width: channels of conv1; 96 is the paper's network, 12 a CPU-sized one.
        dropout: before fc6 and before fc7, as in AlexNet.
    """
    return SlowFusion(num_classes=num_classes, width=width, dropout=dropout)
