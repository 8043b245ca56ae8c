"""Non-local block (Wang, Girshick, Gupta & He, "Non-local Neural Networks", CVPR 2018),
as the authors' code computes it (video-nonlocal-net; PySlowFast's and
PyTorchVideo's ``Nonlocal``), so that their checkpoints compute here what they did
there.

Every space-time position attends to every other one:

    x (B, C, T, H, W) ───────────────────────────────────────────┐
      ├─ θ: 1×1×1 conv → C′ ─────────────────────┐               │
      └─ [max pool 1×2×2] ─┬─ φ: 1×1×1 conv → C′ ┼─ f(θ, φ): N × M
                           │                     │  embedded_gaussian: softmax_j(θ_iᵀφ_j / √C′)
                           │                     │  dot_product:       θ_iᵀφ_j / M
                           └─ g: 1×1×1 conv → C′ ┴─ y = f · g: C′ × N
                                                      └─ W_z: 1×1×1 conv → C → BN ─(+)─ z

C′ = C/2. N = T·H·W positions query M key positions; the max pool (the paper's
sub-sampling) runs on x before φ and g, so M = N/4. The BN after W_z starts with
γ = 0, so z = x at initialisation: inserting the block into a trained or freshly
initialised network leaves its output unchanged until the block learns something.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

NonLocalMode = Literal["embedded_gaussian", "dot_product"]
MODES: tuple[NonLocalMode, ...] = ("embedded_gaussian", "dot_product")


class ZeroInitBatchNorm3d(nn.BatchNorm3d):
    """A BatchNorm3d whose scale γ resets to 0, so the branch it ends outputs zeros."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.weight)


class NonLocalBlock(nn.Module):
    """Residual non-local block over (T, H, W); the identity at initialisation."""

    def __init__(
        self,
        channels: int,
        *,
        mode: NonLocalMode = "embedded_gaussian",
        inner_channels: int | None = None,
        subsample: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"non-local mode must be one of {', '.join(MODES)}, got {mode!r}")
        inner = inner_channels or max(channels // 2, 1)
        self.mode = mode
        self.theta = nn.Conv3d(channels, inner, 1)
        # Keys and values come from x pooled to half its height and width (the authors'
        # code pools x itself, before the φ and g convs).
        self.pool = nn.MaxPool3d((1, 2, 2)) if subsample else nn.Identity()
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.out = nn.Conv3d(inner, channels, 1)  # W_z, with a bias as in the authors' code
        self.bn = ZeroInitBatchNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        b, _, t, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C', N)
        pooled = self.pool(x)
        phi = self.phi(pooled).flatten(2)  # (B, C', M)
        g = self.g(pooled).flatten(2)  # (B, C', M)
        affinity = theta.transpose(1, 2) @ phi  # (B, N, M)
        if self.mode == "embedded_gaussian":
            # Scaled by 1/√C′ before the softmax, as in the authors' code.
            affinity = torch.softmax(affinity * theta.shape[1] ** -0.5, dim=-1)
        else:
            affinity = affinity / phi.shape[-1]
        y = (g @ affinity.transpose(1, 2)).view(b, -1, t, h, w)  # (B, C', T, H, W)
        return x + self.bn(self.out(y))


def insert_nonlocal(
    stage: nn.Sequential,
    after: Iterable[int],
    *,
    channels: int,
    mode: NonLocalMode = "embedded_gaussian",
    subsample: bool = True,
) -> nn.Sequential:
    """`stage` with a `NonLocalBlock` after each residual block whose index is in `after`.

    Works on any stage whose blocks are children named "0", "1", ... (vidray's
    trunk, torchvision's ResNets and VideoResNets). Existing children keep their
    names and the new ones are called "nl<i>", so a checkpoint of the stage without
    non-local blocks still loads by name. `channels` is the blocks' output width.
    """
    positions = {str(i) for i in after}
    names = {name for name, _ in stage.named_children()}
    if not positions <= names:
        raise ValueError(f"no residual block {sorted(positions - names)} in stage {sorted(names)}")
    if not positions:
        return stage
    children: OrderedDict[str, nn.Module] = OrderedDict()
    for name, child in stage.named_children():
        children[name] = child
        if name in positions:
            children[f"nl{name}"] = NonLocalBlock(channels, mode=mode, subsample=subsample)
    return nn.Sequential(children)
