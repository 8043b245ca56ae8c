"""Two-stream networks (Simonyan & Zisserman 2014): appearance from a frame, motion from flow.

    {"rgb":  (B, 3, T, H, W)} ─ middle frame ─▶ spatial ResNet  ─▶ maps ─┐
    {"flow": (B, 2L, H, W)}   ─────────────────▶ temporal ResNet ─▶ maps ─┴─ fusion ─▶ logits

The temporal stream is a 2D ResNet whose first conv reads the 2L channels of
L stacked flow fields (x_0, y_0, x_1, y_1, ...), in units of the flow bound.
Fusion is data: a module that turns the streams' last feature maps into
logits (`FUSIONS`). Each stream can also be trained alone (``streams``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.backbone2d import IMAGENET_CROP, PAPER_WIDTH, ResNet2d, resnet2d
from vidray.models.registry import InputSpec, register
from vidray.models.weights import init_weights

FLOW = 10  # L, the paper's flow stack (20 input channels)


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """maps (B, C, h, w) -> global average pool -> dropout -> linear."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Dropout(dropout),
        nn.Linear(channels, num_classes),
    )


class ScoreAverage(nn.Module):
    """Each stream classified alone, class probabilities averaged (the paper's test-time fusion).

    Returns log(mean_s softmax(logits_s)): the softmax of that is the averaged
    probability, so cross-entropy trains the fused model and argmax predicts
    with it. With one stream this is log_softmax of its logits: the same
    probabilities and predictions as the stream's own classifier.
    """

    def __init__(self, channels: dict[str, int], num_classes: int, dropout: float):
        super().__init__()
        self.heads = nn.ModuleDict(
            {name: _classifier(c, num_classes, dropout) for name, c in channels.items()}
        )

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        log_probs = torch.stack([F.log_softmax(self.heads[n](m), dim=1) for n, m in maps.items()])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(maps))


class ConcatFusion(nn.Module):
    """The streams' pooled features concatenated -> dropout -> linear."""

    def __init__(self, channels: dict[str, int], num_classes: int, dropout: float):
        super().__init__()
        self.classifier = _classifier(sum(channels.values()), num_classes, dropout)

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        pooled = [m.mean(dim=(2, 3), keepdim=True) for m in maps.values()]
        return self.classifier(torch.cat(pooled, dim=1))


class ConvFusion(nn.Module):
    """Feichtenhofer et al. 2016: maps stacked on channels, a 1x1 conv 2C -> C, relu, classifier.

    The 1x1 conv learns which channels of one stream go with which of the
    other at each position; the relu keeps it from collapsing into the linear
    classifier (without it this would be concat fusion with a factored weight).
    """

    def __init__(self, channels: dict[str, int], num_classes: int, dropout: float):
        super().__init__()
        c_out = max(channels.values())
        self.fuse = nn.Sequential(
            nn.Conv2d(sum(channels.values()), c_out, kernel_size=1), nn.ReLU(inplace=True)
        )
        init_weights(self.fuse)
        self.classifier = _classifier(c_out, num_classes, dropout)

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.fuse(torch.cat(list(maps.values()), dim=1)))


FUSIONS: dict[str, type[nn.Module]] = {
    "avg": ScoreAverage,
    "concat": ConcatFusion,
    "conv": ConvFusion,
}
STREAMS = {"both": ("rgb", "flow"), "rgb": ("rgb",), "flow": ("flow",)}


class TwoStreamNet(nn.Module):
    """Trunks keyed by the input they read ("rgb", "flow") and a fusion of their last maps."""

    def __init__(self, streams: dict[str, ResNet2d], fusion: nn.Module):
        super().__init__()
        self.streams = nn.ModuleDict(streams)
        self.fusion = fusion

    def stream_input(self, name: str, inputs: dict[str, Tensor]) -> Tensor:
        """The spatial stream's middle frame (B, 3, H, W), or the flow stack (B, 2L, H, W)."""
        if name == "rgb":
            rgb = inputs["rgb"]
            return rgb[:, :, rgb.shape[2] // 2]
        flow, wanted = inputs["flow"], self.streams["flow"].in_channels
        if flow.shape[1] != wanted:
            raise VidrayError(
                f"the temporal stream reads {wanted // 2} flow fields, got {flow.shape[1] // 2}: "
                "build it with flow equal to flow.L"
            )
        return flow

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        if not isinstance(inputs, dict):
            raise VidrayError(
                "two_stream reads {'rgb', 'flow'} inputs: give the dataset optical flow "
                "(ingest with a flow backend) and set flow.L"
            )
        maps = {
            name: trunk(self.stream_input(name, inputs)) for name, trunk in self.streams.items()
        }
        return self.fusion(maps)


@register(
    "two_stream",
    paper="Simonyan & Zisserman 2014; conv fusion: Feichtenhofer et al. 2016",
    input=InputSpec(frames=1, crop=IMAGENET_CROP, flow=FLOW),
)
def two_stream(
    *,
    num_classes: int,
    flow: int = FLOW,
    fusion: str = "avg",
    streams: str = "both",
    depth: int = 18,
    width: int = PAPER_WIDTH,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """Two-stream network: a spatial ResNet on one frame, a temporal ResNet on L flow fields.

        rgb (B, 3, T, H, W) ─ frame T//2 ─▶ ResNet (3 → width) ──▶ maps_s ─┐
        flow (B, 2L, H, W) ──────────────▶ ResNet (2L → width) ─▶ maps_t ─┴─ fusion ─▶ logits

        fusion "avg":    pool → linear per stream; log(mean of the two softmaxes)
               "concat": pool each, concatenate → dropout → linear
               "conv":   stack maps on channels → 1x1 conv → relu → pool → dropout → linear

    "avg" returns log-probabilities, not raw logits: their softmax is the mean of
    the streams' softmaxes, as the paper fuses at test time, and training it with
    cross-entropy trains the fused prediction.

    Args:
        num_classes: logits per clip.
        flow: L, flow fields stacked for the temporal stream (2L input channels).
        fusion: "avg", "concat" or "conv".
        streams: "both", or "rgb" / "flow" to train one stream alone (its own
            classifier; ``fusion`` then has nothing to fuse and is not used).
        depth: ResNet depth of each stream, 18, 34 or 50.
        width: channels of the first stage (64 in the paper); later stages scale with it.
        dropout: before each classifier.
        pretrained: ImageNet weights for both streams, a state_dict file or a torchvision
            weights name (e.g. "ResNet18_Weights.IMAGENET1K_V1"); needs width=64. The
            temporal stream's conv1 gets the RGB kernel averaged over colour and copied
            to all 2L channels (Wang et al. 2016's cross-modality initialisation).
    """
    if fusion not in FUSIONS:
        raise VidrayError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
    if streams not in STREAMS:
        raise VidrayError(f"unknown streams {streams!r}; valid: {', '.join(STREAMS)}")
    in_channels = {"rgb": 3, "flow": 2 * flow}
    trunks = {
        name: resnet2d(
            depth=depth, width=width, pretrained=pretrained, in_channels=in_channels[name]
        )
        for name in STREAMS[streams]
    }
    channels = {name: trunk.out_channels for name, trunk in trunks.items()}
    make_fusion = FUSIONS[fusion] if streams == "both" else ScoreAverage
    return TwoStreamNet(trunks, make_fusion(channels, num_classes, dropout))
