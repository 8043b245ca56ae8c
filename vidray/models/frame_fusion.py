"""Frame-based fusion (Karpathy et al. 2014, "Large-scale video classification with CNNs").

Where the frames of a clip meet decides what a 2D network can learn about
motion. Every model here is the same two pieces, a 2D ResNet trunk
(`vidray.models.backbone2d`) and a fusion head, and differs only in how the
clip reaches the trunk and which head reads the features:

    single_frame      per frame   (B, T, C) ─ mean over T ─ linear     never sees motion
    late_fusion_pool  per frame   (B, T, C) ─ mean over T ─ linear     (the same net: T > 1)
    late_fusion_fc    per frame   (B, T, C) ─ concat T·C ─ MLP         sees the order of frames
    early_fusion      3T channels (B, 1, C) ─ linear                   motion in the first conv

A linear layer commutes with the mean, so "per-frame logits averaged over
time" (single_frame) and "features averaged over space and time, then a
linear layer" (late_fusion_pool) are one network. What makes ``single_frame``
the lecture's baseline is its input: one frame per clip in training
(``InputSpec(frames=1)``), the mean of softmax over many clips of a video at
test time (done by evaluation).
"""

from __future__ import annotations

from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.backbone2d import IMAGENET_CROP, PAPER_WIDTH, ResNet2d, resnet2d, stack_time
from vidray.models.registry import InputSpec, register

FRAMES = 10  # Karpathy et al.'s T for the fused models (about a third of a second)
PAPER = "Karpathy et al. 2014"


class PoolLinear(nn.Module):
    """(B, T, C) -> mean over T -> dropout -> linear -> (B, num_classes)."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(x.mean(dim=1)))


class ConcatMLP(nn.Module):
    """(B, T, C) -> concat (B, T·C) -> linear -> relu -> dropout -> linear -> (B, num_classes)."""

    def __init__(self, channels: int, frames: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(frames * channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class FrameFusionNet(nn.Module):
    """A 2D trunk over a clip's frames (one by one, or stacked on channels) and a fusion head.

    ``frames`` is the clip length the head or stem was built for (None: any T).
    """

    def __init__(self, trunk: ResNet2d, head: nn.Module, *, frames: int | None, stack: bool):
        super().__init__()
        self.trunk, self.head = trunk, head
        self.frames, self.stack = frames, stack

    def features(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, T', C): T' = T per-frame vectors, or 1 for stacked frames."""
        if self.frames is not None and clip.shape[2] != self.frames:
            raise VidrayError(
                f"this model was built for clips of {self.frames} frames, got {clip.shape[2]}: "
                "build it with frames equal to clip.T"
            )
        if self.stack:
            return self.trunk.pooled(stack_time(clip)).unsqueeze(1)
        return self.trunk.per_frame(clip)

    def forward(self, clip: Tensor) -> Tensor:
        return self.head(self.features(clip))


@register(
    "single_frame", paper=f"{PAPER} (single-frame)", input=InputSpec(frames=1, crop=IMAGENET_CROP)
)
def single_frame(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """Single-frame CNN: a 2D ResNet on every frame, logits averaged over time.

        clip (B, 3, T, H, W) ─ each frame ─▶ ResNet-depth ─▶ (B, T, C) ─ mean_t ─▶ linear

    Trained on one frame per clip; a video's prediction averages its clips.

    Args:
        num_classes: logits per clip.
        depth: ResNet depth, 18, 34 or 50.
        width: channels of the first stage (64 in the paper); later stages scale with it.
        dropout: before the classifier.
        pretrained: ImageNet weights, a state_dict file or a torchvision weights name
            (e.g. "ResNet18_Weights.IMAGENET1K_V1"); needs width=64.
    """
    trunk = resnet2d(depth=depth, width=width, pretrained=pretrained)
    head = PoolLinear(trunk.out_channels, num_classes, dropout)
    return FrameFusionNet(trunk, head, frames=None, stack=False)


@register(
    "late_fusion_pool",
    paper=f"{PAPER} (late fusion)",
    input=InputSpec(frames=FRAMES, crop=IMAGENET_CROP),
)
def late_fusion_pool(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """Late fusion by pooling: per-frame features averaged over space and time, then linear.

        clip ─ each frame ─▶ ResNet ─▶ (B, T, C, h, w) ─ mean over h, w, T ─▶ (B, C) ─▶ linear

    Works for any T; args as in `single_frame`, which is the same network (see the module
    docstring): the two differ in the clips they are trained on.
    """
    return single_frame(
        num_classes=num_classes, depth=depth, width=width, dropout=dropout, pretrained=pretrained
    )


@register(
    "late_fusion_fc",
    paper=f"{PAPER} (late fusion)",
    input=InputSpec(frames=FRAMES, crop=IMAGENET_CROP),
)
def late_fusion_fc(
    *,
    num_classes: int,
    frames: int = FRAMES,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    hidden: int = 4096,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """Late fusion by an MLP: per-frame pooled features concatenated over time.

        clip ─ each frame ─▶ ResNet ─▶ pooled (B, T, C) ─ concat ─▶ (B, T·C)
             ─▶ linear(hidden) ─▶ relu ─▶ dropout ─▶ linear ─▶ logits

    Args:
        frames: T; the MLP's input is sized for it, so clips must have exactly T frames
            (Karpathy et al.'s late fusion used 2 frames 15 apart: frames=2 with a long stride).
        hidden: units of the MLP's hidden layer (4096, the paper's fully connected width).
        depth, width, dropout, pretrained: as in `single_frame`.
    """
    trunk = resnet2d(depth=depth, width=width, pretrained=pretrained)
    head = ConcatMLP(trunk.out_channels, frames, hidden, num_classes, dropout)
    return FrameFusionNet(trunk, head, frames=frames, stack=False)


@register(
    "early_fusion",
    paper=f"{PAPER} (early fusion)",
    input=InputSpec(frames=FRAMES, crop=IMAGENET_CROP),
)
def early_fusion(
    *,
    num_classes: int,
    frames: int = FRAMES,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """Early fusion: the first conv sees all T frames at once (3T input channels), then 2D.

        clip (B, 3, T, H, W) ─ stack ─▶ (B, 3T, H, W) ─▶ conv1 (3T→width) ─▶ ResNet ─▶ pooled
             ─▶ dropout ─▶ linear ─▶ logits

    With ``pretrained``, conv1's RGB kernel is tiled over the T frames and divided
    by T, so on a static clip the network starts out as the pretrained 2D one.

    Args:
        frames: T; conv1 is sized for it, so clips must have exactly T frames.
        depth, width, dropout, pretrained: as in `single_frame`.
    """
    trunk = resnet2d(
        depth=depth, width=width, pretrained=pretrained, in_channels=3 * frames, stem_init="tile"
    )
    head = PoolLinear(trunk.out_channels, num_classes, dropout)
    return FrameFusionNet(trunk, head, frames=frames, stack=True)
