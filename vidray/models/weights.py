"""The one initialisation of every network trained from scratch (pretrained weights
are read by `vidray.state_dicts`)."""

from __future__ import annotations

from torch import nn

# The std of a classifier's weights in the 3D networks (PySlowFast's heads, C3D's
# VGG-style classifier); torchvision's 2D ResNets keep PyTorch's default there.
HEAD_STD = 0.01


def init_weights(module: nn.Module, *, linear_std: float | None = None) -> None:
    """The weight initialisation of every network here (He et al. 2015, as torchvision).

    Convolutions, 2D and 3D: He-normal over fan-out, bias zero. Norm layers reset
    themselves: the identity, except one made to start at zero (a non-local block's
    last), which stays zero. Linear layers: N(0, ``linear_std``) with zero bias where
    it is given, else PyTorch's default.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, std=linear_std)
            nn.init.zeros_(m.bias)
