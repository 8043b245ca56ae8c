"""Recurrent models over per-frame 2D features: CNN+LSTM and the recurrent convolutional net.

    cnn_lstm        frame ─▶ ResNet ─▶ pooled vector ─▶ LSTM over time ─▶ last step ─▶ linear
    recurrent_conv  frame ─▶ ResNet ─▶ maps at layer2, layer3, layer4 ─▶ one ConvGRU per layer
                    over time ─▶ last states, pooled and concatenated ─▶ linear

Both have an unbounded temporal extent, unlike a 3D CNN whose receptive
field in time is fixed by its kernels. ``cnn_lstm`` models time only on top of
the last, spatially pooled features; ``recurrent_conv`` keeps the spatial maps
and recurs at several depths, so fine motion seen by early layers is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.backbone2d import IMAGENET_CROP, PAPER_WIDTH, ResNet2d, fold_time, resnet2d
from vidray.models.registry import InputSpec, register
from vidray.models.weights import init_weights

FRAMES = 16  # LRCN's clip length (Donahue et al. 2015)


class ConvGRU(nn.Module):
    """A GRU whose products are k x k convolutions (Ballas et al. 2016, GRU-RCN).

        z  = σ(W_z ∗ x_t + U_z ∗ h_{t-1})            update gate
        r  = σ(W_r ∗ x_t + U_r ∗ h_{t-1})            reset gate
        h̃  = tanh(W ∗ x_t + U ∗ (r ⊙ h_{t-1}))       candidate
        h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h̃

    Convolutions share weights over positions, so the parameter count does not
    grow with the map size as a fully connected GRU's would. A conv over the
    channel concatenation [x, h] computes W ∗ x + U ∗ h in one call.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        self.hidden_channels = hidden_channels
        c, pad = in_channels + hidden_channels, kernel_size // 2
        self.gates = nn.Conv2d(c, 2 * hidden_channels, kernel_size, padding=pad)
        self.candidate = nn.Conv2d(c, hidden_channels, kernel_size, padding=pad)
        init_weights(self)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        """One time step: x (B, C_in, h, w), h (B, C_hidden, h, w) -> the next h."""
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return torch.lerp(h, candidate, z)

    def forward(self, seq: Tensor) -> Tensor:
        """(B, T, C_in, h, w) -> the last state (B, C_hidden, h, w), starting from zeros."""
        b, _, _, height, width = seq.shape
        h = seq.new_zeros(b, self.hidden_channels, height, width)
        for x in seq.unbind(dim=1):
            h = self.step(x, h)
        return h


class CNNLSTM(nn.Module):
    """Per-frame pooled trunk features -> LSTM -> classifier on the last step."""

    def __init__(
        self, trunk: ResNet2d, *, hidden: int, layers: int, num_classes: int, dropout: float
    ):
        super().__init__()
        self.trunk = trunk
        # nn.LSTM applies dropout between stacked layers only (and warns when there is one)
        self.lstm = nn.LSTM(
            trunk.out_channels,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, clip: Tensor) -> Tensor:
        steps, _ = self.lstm(self.trunk.per_frame(clip))  # (B, T, hidden)
        return self.fc(self.dropout(steps[:, -1]))


class RecurrentConvNet(nn.Module):
    """Trunk maps at the tapped stages -> one ConvGRU each over time -> pooled, concatenated."""

    def __init__(self, trunk: ResNet2d, *, taps: Sequence[int], num_classes: int, dropout: float):
        super().__init__()
        taps = tuple(taps)
        if not taps or len(set(taps)) != len(taps) or not set(taps) <= {1, 2, 3, 4}:
            raise VidrayError(
                f"taps must be distinct ResNet stages among 1, 2, 3, 4; got {list(taps)}"
            )
        self.trunk, self.taps = trunk, tuple(sorted(taps))
        # A stage's state gets the stage's base channels (width·2^(i-1)): its output channels for
        # basic blocks, a quarter of them for bottlenecks, where a full-width 3x3 ConvGRU at
        # layer4 alone would hold 226 M parameters.
        hidden = [trunk.width * 2 ** (i - 1) for i in self.taps]
        self.grus = nn.ModuleList(
            ConvGRU(trunk.stage_channels[i - 1], h) for i, h in zip(self.taps, hidden, strict=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(sum(hidden), num_classes)

    def forward(self, clip: Tensor) -> Tensor:
        b, t = clip.shape[0], clip.shape[2]
        maps = self.trunk.stage_maps(fold_time(clip), last=self.taps[-1])
        states = [
            gru(maps[i - 1].unflatten(0, (b, t)))
            for i, gru in zip(self.taps, self.grus, strict=True)
        ]
        pooled = torch.cat([s.mean(dim=(2, 3)) for s in states], dim=1)
        return self.fc(self.dropout(pooled))


@register(
    "cnn_lstm",
    paper="Donahue et al. 2015 (LRCN); Baccouche et al. 2011",
    input=InputSpec(frames=FRAMES, crop=IMAGENET_CROP),
)
def cnn_lstm(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    hidden: int = 256,
    layers: int = 1,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """CNN + LSTM: per-frame 2D features fed to an LSTM, classified from its last step.

        frame_1 ─▶ ResNet ─▶ f_1 ─▶ LSTM ─▶ LSTM ─▶ ... ─▶ LSTM ─▶ h_T ─▶ dropout ─▶ linear
        frame_2 ─▶ ResNet ─▶ f_2 ─────────────┘               │
        frame_T ─▶ ResNet ─▶ f_T ─────────────────────────────┘

    Works for any T.

    Args:
        num_classes: logits per clip.
        depth: ResNet depth, 18, 34 or 50.
        width: channels of the trunk's first stage (64 in the paper); later stages scale.
        hidden: LSTM units (256, LRCN's).
        layers: stacked LSTM layers (1, LRCN's).
        dropout: before the classifier (and between LSTM layers when there are several).
        pretrained: ImageNet weights for the trunk, a state_dict file or a torchvision
            weights name (e.g. "ResNet18_Weights.IMAGENET1K_V1"); needs width=64.
    """
    trunk = resnet2d(depth=depth, width=width, pretrained=pretrained)
    return CNNLSTM(trunk, hidden=hidden, layers=layers, num_classes=num_classes, dropout=dropout)


@register(
    "recurrent_conv",
    paper="Ballas et al. 2016 (GRU-RCN)",
    input=InputSpec(frames=FRAMES, crop=IMAGENET_CROP),
)
def recurrent_conv(
    *,
    num_classes: int,
    depth: int = 18,
    width: int = PAPER_WIDTH,
    taps: Sequence[int] = (2, 3, 4),
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> nn.Module:
    """Recurrent convolutional network: a ConvGRU over time at several depths of the trunk.

        frames ─▶ ResNet ─┬─ layer2 maps ─▶ ConvGRU over t ─▶ h_T ─ mean(h, w) ─┐
                          ├─ layer3 maps ─▶ ConvGRU over t ─▶ h_T ─ mean(h, w) ─┼─ concat
                          └─ layer4 maps ─▶ ConvGRU over t ─▶ h_T ─ mean(h, w) ─┘   │
                                                          dropout ─▶ linear ─▶ logits

    Each ConvGRU keeps its layer's resolution (and its channels, up to the
    bottleneck expansion of depth 50), so every tapped layer sees the whole
    clip. The paper gives each layer a softmax classifier and averages them at
    test time; one linear layer over the concatenation is the sum of per-layer
    linear classifiers, trained jointly. Works for any T.

    Args:
        taps: trunk stages (1-4) whose maps get a ConvGRU: (2, 3, 4), at strides 8 to 32.
            The paper taps VGG-16 from pool2 (stride 4, stage 1 here: the costliest map) on.
        depth, width, dropout, pretrained: as in `cnn_lstm`.
    """
    trunk = resnet2d(depth=depth, width=width, pretrained=pretrained)
    return RecurrentConvNet(trunk, taps=taps, num_classes=num_classes, dropout=dropout)
