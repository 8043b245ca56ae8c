"""The 3D ResNet trunk that I3D, I3D + non-local and both SlowFast pathways are built from.

A network here is data over a few shared pieces:

    clip (B, 3, T, H, W)
      └─ stem     conv k_t×7×7 stride (1,2,2) → BN → ReLU → max pool 1×3×3 stride (1,2,2)
      └─ layer1   res2: blocks × (basic | bottleneck), each with its own temporal kernel
      └─ layer2   res3: [temporal max pool] → blocks, [non-local after chosen blocks]
      └─ layer3   res4: ...
      └─ layer4   res5: ... (spatial stride 2, or 1 and dilation 2 for a detector's denser map)
      └─ head     global average pool over (T, H, W) → dropout → linear → logits

`PathwaySpec` (stem + four `StageSpec`s) describes one such stack; `build_pathway`
turns it into modules; `ResNet3d` is one pathway plus a `Head`. The families
differ only in the spec: I3D inflates temporal kernels into res2..res5, the
SlowFast slow pathway keeps res2/res3 temporally degenerate (k_t = 1), its fast
pathway is the same stack with 1/8 of the channels.

The temporal kernel of a block sits on its first conv (the 1×1 of a bottleneck,
which becomes k_t×1×1; the first 3×3 of a basic block, which becomes k_t×3×3), as in
PyTorchVideo's I3D/SlowFast R50. Module names follow torchvision's 2D ResNet
(`layerN.i.conv1`, `downsample.0`, ...), so 2D weights map onto a trunk by name
(`vidray.models.i3d`) and a trunk with non-local blocks shares every other name
with the same trunk without them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.nonlocal_block import MODES, NonLocalMode, insert_nonlocal
from vidray.models.weights import HEAD_STD, init_weights

TimePadding = Literal["zeros", "replicate"]
TIME_PADDINGS: tuple[TimePadding, ...] = ("zeros", "replicate")

# Blocks per stage (res2..res5) for each ResNet depth, as in He et al. 2016.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class SameConv3d(nn.Conv3d):
    """A bias-free Conv3d with 'same' padding whose time edges are zeros or repeated frames.

    Replicate padding in time keeps a temporally constant input constant through the
    conv at every frame, edge frames included; that is what lets an inflated network
    reproduce its 2D source exactly on a constant video (see `vidray.models.i3d`).
    Space is always zero-padded, as in the 2D network; a `spatial_dilation` d spreads
    the kernel's taps d pixels apart and pads d · (k // 2), so the map keeps its size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        time_padding: TimePadding = "zeros",
        spatial_dilation: int = 1,
    ):
        k_t, k_h, k_w = kernel
        replicate = time_padding == "replicate"
        d = spatial_dilation
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding=(0 if replicate else k_t // 2, d * (k_h // 2), d * (k_w // 2)),
            dilation=(1, d, d),
            bias=False,
        )
        self.time_pad = k_t // 2 if replicate else 0

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, self.time_pad), mode="replicate")
        return super().forward(x)


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """The projection shortcut (1×1×1 conv + BN) where the residual changes shape."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(c_out)
    )


class BasicBlock3d(nn.Module):
    """ResNet-18/34 block: k_t×3×3 conv (spatial stride here) → 1×3×3 conv (dilated where
    asked, as PySlowFast's basic transform), plus shortcut."""

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        c_in: int,
        channels: int,
        *,
        temporal_kernel: int,
        stride: int,
        time_padding: TimePadding,
        spatial_dilation: int = 1,
    ):
        super().__init__()
        self.conv1 = SameConv3d(
            c_in, channels, (temporal_kernel, 3, 3), (1, stride, stride), time_padding=time_padding
        )
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = SameConv3d(channels, channels, (1, 3, 3), spatial_dilation=spatial_dilation)
        self.bn2 = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck3d(nn.Module):
    """ResNet-50+ block: k_t×1×1 → 1×3×3 (spatial stride and dilation here) → 1×1×1 (×4
    channels); PyTorchVideo's conv_b and PySlowFast's "b" conv carry the dilation too."""

    expansion: ClassVar[int] = 4

    def __init__(
        self,
        c_in: int,
        channels: int,
        *,
        temporal_kernel: int,
        stride: int,
        time_padding: TimePadding,
        spatial_dilation: int = 1,
    ):
        super().__init__()
        c_out = channels * self.expansion
        self.conv1 = SameConv3d(c_in, channels, (temporal_kernel, 1, 1), time_padding=time_padding)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = SameConv3d(
            channels, channels, (1, 3, 3), (1, stride, stride), spatial_dilation=spatial_dilation
        )
        self.bn2 = nn.BatchNorm3d(channels)
        self.conv3 = SameConv3d(channels, c_out, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


Block = type[BasicBlock3d] | type[Bottleneck3d]


@dataclass(frozen=True)
class StageSpec:
    """One residual stage (res2..res5).

    `temporal_kernels` is a pattern repeated over the blocks: (3,) gives every block
    k_t = 3, (3, 1) gives 3, 1, 3, 1, ... (I3D's "every other block").
    `temporal_pool` > 1 max-pools time by that factor before the first block (I3D
    R50 halves T between res2 and res3). `nonlocal_after` lists the indices of the
    blocks followed by a non-local block. `spatial_dilation` dilates every block's
    1×3×3 conv: the detectors of the SlowFast paper run res5 at stride 1 and dilation 2,
    so its kernels span what they spanned at stride 2 in the Kinetics network.
    """

    blocks: int
    channels: int  # a block's inner width; the stage outputs channels * block.expansion
    spatial_stride: int = 2
    spatial_dilation: int = 1
    temporal_kernels: tuple[int, ...] = (1,)
    temporal_pool: int = 1
    nonlocal_after: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if min(self.blocks, self.channels, self.spatial_dilation) < 1 or not self.temporal_kernels:
            raise ValueError(f"invalid stage {self}")
        if any(k < 1 or k % 2 == 0 for k in self.temporal_kernels):
            raise ValueError(f"temporal kernels must be odd ('same' padding): {self}")
        if any(not 0 <= i < self.blocks for i in self.nonlocal_after):
            raise ValueError(f"non-local position out of range: {self}")

    def temporal_kernel(self, block: int) -> int:
        return self.temporal_kernels[block % len(self.temporal_kernels)]


@dataclass(frozen=True)
class PathwaySpec:
    """A full 3D ResNet stack: stem + four stages, and how its convs pad time."""

    block: Block
    width: int  # stem channels; stage i has width * 2**i inner channels
    stem_kernel: int  # temporal kernel of the 7×7 stem conv
    stages: tuple[StageSpec, ...]
    time_padding: TimePadding = "zeros"
    nonlocal_mode: NonLocalMode = "embedded_gaussian"

    def __post_init__(self) -> None:
        # Both come from user config: a typo is a one-line error, not a silent default.
        if self.time_padding not in TIME_PADDINGS:
            raise VidrayError(
                f"time_padding must be one of {', '.join(TIME_PADDINGS)}, got {self.time_padding!r}"
            )
        if self.nonlocal_mode not in MODES:
            raise VidrayError(
                f"nonlocal_mode must be one of {', '.join(MODES)}, got {self.nonlocal_mode!r}"
            )

    @classmethod
    def resnet(
        cls,
        depth: int,
        *,
        width: int = 64,
        stem_kernel: int = 1,
        temporal_kernels: Sequence[tuple[int, ...]] = ((1,), (1,), (1,), (1,)),
        res5_stride: int = 2,
        res5_dilation: int = 1,
        time_padding: TimePadding = "zeros",
    ) -> PathwaySpec:
        """The standard ResNet-`depth` layout with the given temporal kernels per stage;
        res5's spatial stride and the dilation of its 1×3×3 convs are arguments."""
        if depth not in STAGE_BLOCKS:
            raise VidrayError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if width < 1:
            raise VidrayError(f"width must be >= 1, got {width}")
        if res5_stride not in (1, 2):
            raise VidrayError(f"res5_stride must be 1 or 2, got {res5_stride}")
        if res5_dilation < 1:
            raise VidrayError(f"res5_dilation must be >= 1, got {res5_dilation}")
        strides = (1, 2, 2, res5_stride)
        stages = tuple(
            StageSpec(blocks=n, channels=width * 2**i, spatial_stride=s, temporal_kernels=tuple(k))
            for i, (n, s, k) in enumerate(
                zip(STAGE_BLOCKS[depth], strides, temporal_kernels, strict=True)
            )
        )
        block = BasicBlock3d if depth < 50 else Bottleneck3d
        spec = cls(block, width, stem_kernel, stages, time_padding)
        return spec.with_stage(3, spatial_dilation=res5_dilation)

    def with_stage(self, index: int, **changes: object) -> PathwaySpec:
        """This spec with stage `index` (0 = res2) changed, e.g. ``temporal_pool=2``."""
        stages = list(self.stages)
        stages[index] = replace(stages[index], **changes)
        return replace(self, stages=tuple(stages))

    def out_channels(self) -> list[int]:
        """Channels after the stem and after each stage."""
        return [self.width] + [s.channels * self.block.expansion for s in self.stages]


def make_stem(
    c_in: int, width: int, temporal_kernel: int, time_padding: TimePadding
) -> nn.Sequential:
    """conv k_t×7×7 stride (1,2,2) → BN → ReLU → max pool 1×3×3 stride (1,2,2)."""
    return nn.Sequential(
        OrderedDict(
            conv=SameConv3d(
                c_in, width, (temporal_kernel, 7, 7), (1, 2, 2), time_padding=time_padding
            ),
            bn=nn.BatchNorm3d(width),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
    )


def make_stage(c_in: int, stage: StageSpec, spec: PathwaySpec) -> nn.Sequential:
    """The blocks of one stage, named "0", "1", ... as torchvision names them."""
    children: OrderedDict[str, nn.Module] = OrderedDict()
    if stage.temporal_pool > 1:
        children["tpool"] = nn.MaxPool3d((stage.temporal_pool, 1, 1))
    for i in range(stage.blocks):
        children[str(i)] = spec.block(
            c_in,
            stage.channels,
            temporal_kernel=stage.temporal_kernel(i),
            stride=stage.spatial_stride if i == 0 else 1,
            time_padding=spec.time_padding,
            spatial_dilation=stage.spatial_dilation,
        )
        c_in = stage.channels * spec.block.expansion
    return insert_nonlocal(
        nn.Sequential(children), stage.nonlocal_after, channels=c_in, mode=spec.nonlocal_mode
    )


def build_pathway(
    spec: PathwaySpec, *, in_channels: int = 3, lateral: Sequence[int] = (0, 0, 0, 0)
) -> nn.Sequential:
    """stem, layer1..layer4 for `spec`; `lateral[i]` extra channels enter stage i.

    The extra channels are what a SlowFast lateral connection concatenates onto the
    slow pathway after the stem and res2..res4.
    """
    channels = spec.out_channels()
    modules = OrderedDict(
        stem=make_stem(in_channels, spec.width, spec.stem_kernel, spec.time_padding)
    )
    for i, stage in enumerate(spec.stages):
        modules[f"layer{i + 1}"] = make_stage(channels[i] + lateral[i], stage, spec)
    return nn.Sequential(modules)


class Head(nn.Module):
    """Global average pool of each input over (T, H, W), concatenated → dropout → linear."""

    def __init__(self, in_features: int, num_classes: int, dropout: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, *features: Tensor) -> Tensor:
        pooled = torch.cat([self.pool(f).flatten(1) for f in features], dim=1)
        return self.fc(self.dropout(pooled))


class ResNet3d(nn.Module):
    """One pathway and a head: stem, layer1..layer4, head.

    `features` is the map after res5 (B, C, T', H', W') that a detection head pools
    boxes from; `forward` pools it into logits.
    """

    STAGES: ClassVar[tuple[str, ...]] = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, spec: PathwaySpec, *, num_classes: int, dropout: float = 0.5, in_channels: int = 3
    ):
        super().__init__()
        # Children at the top level, not under a "pathway" module, so layerN.* names
        # are torchvision's and 2D checkpoints map onto them (see vidray.models.i3d).
        for name, stage in build_pathway(spec, in_channels=in_channels).named_children():
            self.add_module(name, stage)
        self.head = Head(spec.out_channels()[-1], num_classes, dropout)
        self.spec = spec
        init_weights(self, linear_std=HEAD_STD)

    def features(self, clip: Tensor) -> Tensor:
        for name in self.STAGES:
            clip = getattr(self, name)(clip)
        return clip

    def forward(self, clip: Tensor) -> Tensor:
        return self.head(self.features(clip))
