"""The shared 2D trunk of the frame-based families: a torchvision ResNet with a width knob.

    image (N, C_in, H, W)
      └─ stem: conv1 7x7/2 → bn1 → relu → maxpool 3x3/2      w
      └─ layer1 .. layer4 (stride 1, 2, 2, 2)                 w, 2w, 4w, 8w (x4 for depth 50)
      └─ maps (N, out_channels, H/32, W/32)  ── mean over (h, w) ──▶ pooled (N, out_channels)

``single_frame``, the late/early-fusion nets, ``cnn_lstm``, ``recurrent_conv``
and both two-stream streams are this trunk plus a head. The blocks are
torchvision's own BasicBlock / Bottleneck and the module names are
torchvision's (``conv1``, ``bn1``, ``layer1.0.downsample.0``, ...), so at
``width=64`` an ImageNet state_dict loads unchanged; unlike torchvision's
``width_per_group``, ``width`` here scales the stem and every stage, which is
what makes a ResNet small enough to train on 2 CPU cores.

A video is handled as images: ``fold_time`` turns (B, 3, T, H, W) into B·T
frames for per-frame trunks, ``stack_time`` into one 3T-channel image for
early fusion. ``set_input_channels`` swaps the first conv for such inputs
(3T channels, or 2L for a flow stack), initialised from the RGB kernel.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from vidray.errors import VidrayError
from vidray.models.weights import init_weights
from vidray.state_dicts import read_state_dict

PAPER_WIDTH = 64  # torchvision's / He et al.'s stem width: the only width ImageNet weights fit
IMAGENET_CROP = 224  # the crop the 2D trunk was designed (and pretrained) for

# depth -> (block, blocks per stage), as in torchvision's resnet18/34/50
DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}

# How a first conv for C_in != 3 inputs is derived from the RGB kernel w (out, 3, k, k):
#   "average": every input channel gets mean_c w[:, c] (Wang et al. 2016, TSN "cross-modality
#              initialisation"), for flow stacks, whose channels have nothing to do with RGB;
#   "tile":    channel 3t + c gets w[:, c] / T, for T stacked RGB frames, so a static clip gives
#              exactly the RGB conv's response to its frame (the I3D inflation property, in 2D).
StemInit = Literal["average", "tile"]


def _stage(
    block: type[BasicBlock | Bottleneck], c_in: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """``blocks`` torchvision blocks; the first projects the shortcut when the shape changes."""
    c_out = planes * block.expansion
    downsample = None
    if stride != 1 or c_in != c_out:
        downsample = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    rest = [block(c_out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(block(c_in, planes, stride, downsample), *rest)


class ResNet2d(nn.Module):
    """A torchvision ResNet without its classifier, every stage scaled by ``width / 64``."""

    def __init__(self, *, depth: int = 18, width: int = PAPER_WIDTH):
        super().__init__()
        if depth not in DEPTHS:
            raise VidrayError(
                f"ResNet depth {depth} is not available; valid: {', '.join(map(str, DEPTHS))}"
            )
        if width < 1:
            raise VidrayError(f"width must be >= 1, got {width}")
        block, blocks = DEPTHS[depth]
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in, self.stage_channels = width, []
        for i, n in enumerate(blocks):
            stage = _stage(block, c_in, width * 2**i, n, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
            c_in = width * 2**i * block.expansion
            self.stage_channels.append(c_in)
        self.out_channels = c_in
        init_weights(self)

    @property
    def in_channels(self) -> int:
        return self.conv1.in_channels

    def stage_maps(self, x: Tensor, last: int = 4) -> list[Tensor]:
        """Feature maps after layer1 .. layer``last`` (stops there: later stages are not run)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for i in range(1, last + 1):
            x = getattr(self, f"layer{i}")(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> the last feature maps (N, out_channels, H/32, W/32), unpooled."""
        return self.stage_maps(x)[-1]

    def pooled(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, out_channels): torchvision's features before ``fc``."""
        return self(x).mean(dim=(2, 3))

    def per_frame(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, T, out_channels): pooled features of every frame."""
        return self.pooled(fold_time(clip)).unflatten(0, (clip.shape[0], clip.shape[2]))

    def load_2d_weights(self, source: str) -> None:
        """Load ImageNet weights: a state_dict file (torch.save) or a torchvision weights name.

        The classifier (``fc.*``) in the source is ignored: every family has its own head.
        """
        if self.width != PAPER_WIDTH:
            raise VidrayError(
                f"pretrained 2D weights fit only width={PAPER_WIDTH} (got width={self.width}): "
                f"drop `pretrained` or set width={PAPER_WIDTH}"
            )
        state = {k: v for k, v in read_state_dict(source).items() if not k.startswith("fc.")}
        own = self.state_dict()
        mismatch = sorted(set(own) ^ set(state)) or [
            k for k in own if own[k].shape != state[k].shape
        ]
        if mismatch:
            raise VidrayError(
                f"pretrained weights {source} do not fit a ResNet-{self.depth} "
                f"(first mismatch: {mismatch[0]}); give weights of the same depth"
            )
        self.load_state_dict(state)

    def set_input_channels(self, channels: int, *, from_rgb: StemInit | None) -> None:
        """Replace ``conv1`` for ``channels`` input channels.

        ``from_rgb`` derives the new kernel from the current RGB one (see
        `StemInit`; use it after loading pretrained weights); ``None`` starts
        it afresh with `init_weights`, as a network trained from scratch does.
        """
        old = self.conv1
        new = nn.Conv2d(
            channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        if from_rgb is None:
            init_weights(new)
        else:
            with torch.no_grad():
                new.weight.copy_(_derive_stem(old.weight, channels, from_rgb))
        self.conv1 = new


def _derive_stem(rgb: Tensor, channels: int, how: StemInit) -> Tensor:
    if how == "average":
        return rgb.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    frames = channels // 3
    return rgb.repeat(1, frames, 1, 1) / frames


def resnet2d(
    *,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    pretrained: str | None = None,
    in_channels: int = 3,
    stem_init: StemInit = "average",
) -> ResNet2d:
    """A trunk, optionally with ImageNet weights, reading ``in_channels`` channels.

    With ``pretrained`` the RGB weights are loaded first and a non-RGB stem is
    then derived from them by ``stem_init``; without, a non-RGB stem is fresh.
    """
    trunk = ResNet2d(depth=depth, width=width)
    if pretrained is not None:
        trunk.load_2d_weights(pretrained)
    if in_channels != 3:
        trunk.set_input_channels(in_channels, from_rgb=stem_init if pretrained else None)
    return trunk


def fold_time(clip: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B·T, C, H, W): every frame becomes an image of one batch."""
    return clip.transpose(1, 2).flatten(0, 1)


def stack_time(clip: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B, T·C, H, W), channel t·C + c = frame t, colour c (see "tile")."""
    return clip.transpose(1, 2).flatten(1, 2)
