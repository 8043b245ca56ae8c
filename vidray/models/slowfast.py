"""SlowFast networks (Feichtenhofer, Fan, Malik & He, ICCV 2019).

Two 3D ResNet pathways from `trunk3d` over one clip, fused fast → slow:

    clip (B, 3, T, H, W)                          T = T_slow · α frames, sampled at stride τ/α
      ├─ slow: T/α frames spread over T          ├─ fast: all T frames, β = 1/8 of the channels
      │   stem  conv 1×7×7        64   ◄─(+16)──┤   stem  conv 5×7×7        8
      │   res2  k_t = 1          256   ◄─(+64)──┤   res2  k_t = 3          32
      │   res3  k_t = 1          512   ◄─(+128)─┤   res3  k_t = 3          64
      │   res4  k_t = 3         1024   ◄─(+256)─┤   res4  k_t = 3         128
      │   res5  k_t = 3         2048            │   res5  k_t = 3         256
      └── global average pool of each, concatenated (2048 + 256) → dropout → fc

    ◄─(+c)─ lateral: conv k×1×1 with time stride α (k = 5 in the paper), C_fast → 2·C_fast
             = 2βC_slow channels, BN, ReLU; concatenated onto the slow pathway's channels
             after the stem and res2..res4 (so slow res2 takes 64 + 16 channels, ...).

Channel numbers are R50's at `width=64`. The slow pathway is temporally degenerate
(k_t = 1) up to res3 and only res4/res5 look across its frames; the fast pathway
has temporal kernels everywhere and no temporal downsampling, so it keeps all T.
At 400 classes, 4×16 R50 has 34.48 M parameters and 36.1 GMACs at 256² (27.6 at
224²); 8×8 R50 has 34.48 M and 65.3 GMACs at 256², and with 7×1×1 laterals, as in
PyTorchVideo's 8×8 checkpoint, 34.57 M and 65.71 GMACs (its figures are at 256²).

"T_slow × τ" names a setting: 4×16 is T_slow = 4 frames at stride τ = 16, with α = 8,
so the model takes T = 32 frames at stride τ/α = 2 of the raw video; 8×8 is
T_slow = 8 at τ = 8 with α = 4, again T = 32 frames at stride 2. The model knows
only α: the loader samples T frames, and the model picks T/α of them for the slow
pathway, evenly spread from the first frame to the last (`slow_frames`). That is how
PySlowFast and PyTorchVideo feed their networks, and so what their checkpoints learnt
from; every α-th frame (0, α, 2α, ...) would shift the slow pathway's view by up to α-1
frames towards the clip's start.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.pretrained import Pretrained, read_pretrained
from vidray.models.registry import InputSpec, register
from vidray.models.trunk3d import Head, PathwaySpec, SameConv3d, build_pathway
from vidray.models.weights import HEAD_STD, TRUNK_HEAD, init_weights, load_pretrained

PAPER = "SlowFast, Feichtenhofer et al. 2019"
PAPER_FUSION_KERNEL = 5
SLOW_KERNELS = ((1,), (1,), (3,), (3,))  # non-degenerate in time only in res4, res5
FAST_KERNELS = ((3,), (3,), (3,), (3,))


def slow_frames(frames: int, alpha: int, device: torch.device | None = None) -> Tensor:
    """Indices of the slow pathway's frames among ``frames``: ceil(frames/α) of them,
    evenly spread from the first frame to the last (PySlowFast's and PyTorchVideo's
    ``linspace(0, T-1, T/α)``, rounded down). Rounding the count up matches the
    laterals' output length when α does not divide ``frames``."""
    count = -(-frames // alpha)
    return torch.linspace(0, frames - 1, count, device=device).long()


class Lateral(nn.Module):
    """Fast → slow fusion: time-strided conv to the slow frame rate, then concatenation."""

    def __init__(self, c_fast: int, c_out: int, *, kernel: int, alpha: int):
        super().__init__()
        # 'same' padding of an odd kernel makes ceil(T/α) outputs: the slow pathway's frames.
        self.conv = SameConv3d(c_fast, c_out, (kernel, 1, 1), (alpha, 1, 1))
        self.bn = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, slow: Tensor, fast: Tensor) -> Tensor:
        return torch.cat([slow, self.relu(self.bn(self.conv(fast)))], dim=1)


class SlowFast(nn.Module):
    """Slow and fast pathways stage by stage, laterals after the stem and res2..res4, head.

    `features` gives both pathways' last maps (what a detection head pools boxes from);
    `forward` pools them into logits.
    """

    def __init__(
        self,
        slow: PathwaySpec,
        fast: PathwaySpec,
        *,
        num_classes: int,
        alpha: int,
        fusion_kernel: int = PAPER_FUSION_KERNEL,
        dropout: float = 0.5,
        in_channels: int = 3,
    ):
        super().__init__()
        self.alpha = alpha
        fast_channels = fast.out_channels()[:-1]  # after the stem and res2..res4
        self.lateral = nn.ModuleList(
            Lateral(c, 2 * c, kernel=fusion_kernel, alpha=alpha) for c in fast_channels
        )
        self.slow = build_pathway(
            slow, in_channels=in_channels, lateral=[2 * c for c in fast_channels]
        )
        self.fast = build_pathway(fast, in_channels=in_channels)
        self.head = Head(slow.out_channels()[-1] + fast.out_channels()[-1], num_classes, dropout)
        init_weights(self, linear_std=HEAD_STD)

    def features(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        """The slow and fast maps after res5, (B, C, T', H', W') each, before the head's pool.

        Their frame counts differ (T/α and T), so they are returned apart; a detection
        head pools each over time before joining them, as the paper does for AVA.
        """
        slow, fast = clip.index_select(2, slow_frames(clip.shape[2], self.alpha, clip.device)), clip
        for i, (slow_stage, fast_stage) in enumerate(zip(self.slow, self.fast, strict=True)):
            slow, fast = slow_stage(slow), fast_stage(fast)
            if i < len(self.lateral):
                slow = self.lateral[i](slow, fast)
        return slow, fast

    def forward(self, clip: Tensor) -> Tensor:
        return self.head(*self.features(clip))


def slowfast(
    *,
    num_classes: int,
    depth: int,
    alpha: int,
    beta: float,
    fusion_kernel: int,
    width: int,
    dropout: float,
    res5_stride: int,
    res5_dilation: int,
) -> SlowFast:
    """A SlowFast ResNet-`depth`; the registered builders document the arguments."""
    fast_width = round(width * beta)
    if fast_width < 1 or abs(fast_width - width * beta) > 1e-9:
        raise VidrayError(f"width * beta must be a whole number >= 1, got {width} * {beta}")
    if alpha < 1:
        raise VidrayError(f"alpha must be >= 1, got {alpha}")
    if fusion_kernel < 1 or fusion_kernel % 2 == 0:
        raise VidrayError(f"fusion_kernel must be odd and >= 1, got {fusion_kernel}")
    slow = PathwaySpec.resnet(
        depth,
        width=width,
        temporal_kernels=SLOW_KERNELS,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
    )
    fast = PathwaySpec.resnet(
        depth,
        width=fast_width,
        stem_kernel=5,
        temporal_kernels=FAST_KERNELS,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
    )
    return SlowFast(
        slow,
        fast,
        num_classes=num_classes,
        alpha=alpha,
        fusion_kernel=fusion_kernel,
        dropout=dropout,
    )


def slowfast_settings(weights: Pretrained) -> dict[str, object]:
    """α and the lateral kernel that ``weights`` were trained with.

    The kernel is the laterals' shape. α leaves no trace in the weights: it is read
    where recorded (a vidray checkpoint's model.alpha, PySlowFast's SLOWFAST.ALPHA),
    else it is 4 for 7×1×1 laterals, which only the published 8×8 models have
    (PyTorchVideo's slowfast_r50, PySlowFast's SLOWFAST_8x8_R50), else the family's.
    """
    settings: dict[str, object] = {}
    lateral = weights.state.get("lateral.0.conv.weight")
    if lateral is not None:
        settings["fusion_kernel"] = int(lateral.shape[2])
    alpha = weights.recorded.get("alpha") or weights.recorded.get("SLOWFAST", {}).get("ALPHA")
    if alpha:
        settings["alpha"] = int(alpha)
    elif settings.get("fusion_kernel") == 7:
        settings["alpha"] = 4
    return settings


def _build(
    *,
    pretrained: str | None,
    alpha: int | None,
    fusion_kernel: int | None,
    paper_alpha: int,
    **kwargs: object,
) -> SlowFast:
    """`slowfast` with α and the lateral kernel as given, else the weights', else the
    paper's; the weights loaded (a fresh classifier for another class count)."""
    weights = read_pretrained(pretrained) if pretrained else None
    implied = slowfast_settings(weights) if weights else {}
    model = slowfast(
        alpha=alpha or int(implied.get("alpha", paper_alpha)),
        fusion_kernel=fusion_kernel or int(implied.get("fusion_kernel", PAPER_FUSION_KERNEL)),
        **kwargs,
    )
    if weights is not None:
        load_pretrained(model, weights.state, source=weights.source, head=TRUNK_HEAD)
    return model


@register(
    "slowfast_r50",
    paper=PAPER,
    input=InputSpec(frames=32, crop=224),
    settings_from=slowfast_settings,
)
def slowfast_r50(
    *,
    num_classes: int,
    depth: int = 50,
    alpha: int | None = None,
    beta: float = 1 / 8,
    fusion_kernel: int | None = None,
    width: int = 64,
    dropout: float = 0.5,
    res5_stride: int = 2,
    res5_dilation: int = 1,
    pretrained: str | None = None,
) -> SlowFast:
    """SlowFast R50 4×16 (module docstring): 32 input frames, the slow pathway gets 4.

    `alpha`: frame-rate ratio fast/slow (8; 4 for 8×8). `beta`: fast/slow channel ratio
    (1/8). `fusion_kernel`: time extent of the lateral convs (5 in the paper; the
    published 8×8 R50 checkpoints use 7). `width`: slow stem channels (64), every
    stage and the fast pathway scale with it. `res5_stride=1` keeps res5 at 1/16
    resolution for a detector, `res5_dilation=2` dilates its 1×3×3 convs as the paper's
    AVA detector does. `pretrained`: weights to start from (`vidray.models.pretrained`:
    PyTorchVideo's or PySlowFast's Kinetics checkpoints, a vidray checkpoint or
    state_dict); the classifier stays fresh for another class count. `alpha` and
    `fusion_kernel` left unset are the weights' (`slowfast_settings`), else 8 and 5.
    """
    return _build(
        num_classes=num_classes,
        depth=depth,
        alpha=alpha,
        paper_alpha=8,
        beta=beta,
        fusion_kernel=fusion_kernel,
        width=width,
        dropout=dropout,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
        pretrained=pretrained,
    )


@register(
    "slowfast_r101",
    paper=PAPER,
    input=InputSpec(frames=32, crop=224),
    settings_from=slowfast_settings,
)
def slowfast_r101(
    *,
    num_classes: int,
    depth: int = 101,
    alpha: int | None = None,
    beta: float = 1 / 8,
    fusion_kernel: int | None = None,
    width: int = 64,
    dropout: float = 0.5,
    res5_stride: int = 2,
    res5_dilation: int = 1,
    pretrained: str | None = None,
) -> SlowFast:
    """SlowFast R101 8×8: 32 input frames, the slow pathway gets 8; arguments as
    `slowfast_r50`, but `alpha` is 4 unless the weights say otherwise."""
    return _build(
        num_classes=num_classes,
        depth=depth,
        alpha=alpha,
        paper_alpha=4,
        beta=beta,
        fusion_kernel=fusion_kernel,
        width=width,
        dropout=dropout,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
        pretrained=pretrained,
    )
