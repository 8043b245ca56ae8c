"""A small 3D CNN: the first vidray model, sized to train on 2 CPU cores.

    clip (B, 3, T, H, W)
      └─ stem: conv 3x3x3, stride (1, 2, 2)          width
      └─ 3 stages: conv 3x3x3, stride 2               2w, 4w, 8w
      └─ global average pool over (T, H, W) → dropout → linear → logits

Every conv is 3D, so the temporal receptive field grows with depth as in the
slow-fusion / 3D-CNN family (Ji et al. 2010; Karpathy et al. 2014); the full
3D families (C3D, R3D, I3D, SlowFast) live in their own modules.
"""

from __future__ import annotations

from torch import Tensor, nn

from vidray.models.registry import InputSpec, register


def _conv_bn_relu(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class Simple3DCNN(nn.Module):
    def __init__(self, *, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        strides = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        layers, c_in = [], 3
        for c_out, stride in zip(widths, strides, strict=True):
            layers.append(_conv_bn_relu(c_in, c_out, stride))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, clip: Tensor) -> Tensor:
        x = self.pool(self.features(clip)).flatten(1)
        return self.fc(self.dropout(x))


@register("simple3d", paper="3D CNN baseline (Ji et al. 2010)", input=InputSpec(frames=8, crop=112))
def simple3d(*, num_classes: int, width: int = 32, dropout: float = 0.2) -> nn.Module:
    """A four-layer 3D CNN; ``width`` channels in the first layer."""
    return Simple3DCNN(num_classes=num_classes, width=width, dropout=dropout)
