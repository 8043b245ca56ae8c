"""Weights: the one initialisation of a network trained from scratch, and pretrained
weights read from a local state_dict file or a torchvision weights name.

    read_state_dict("/models/resnet50.pt")                         # torch.save(model.state_dict())
    read_state_dict("ResNet50_Weights.IMAGENET1K_V2")              # torchvision's registry
    read_state_dict("KINETICS400_V1", enum=R3D_18_Weights)         # a short name within one enum

A registry name is fetched once into the torch hub cache and read locally from
then on; tests never fetch, they save their own weights to a file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_weight

from vidray.errors import VidrayError

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


def read_state_dict(source: str, *, enum: type[WeightsEnum] | None = None) -> dict[str, Tensor]:
    """The state_dict behind ``source``; every failure is a one-line `VidrayError`."""
    path = Path(source).expanduser()
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
            # torch's own message runs to several lines; the type is enough to go on.
            raise VidrayError(
                f"cannot read pretrained weights {path}: not a state_dict saved by torch.save "
                f"({type(exc).__name__})"
            ) from None
        if not isinstance(state, dict):
            raise VidrayError(f"pretrained weights {path} hold no state_dict")
        return state
    weights = _registry_weights(source, enum)
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise VidrayError(
            f"cannot fetch {source}: {exc}; save its state_dict to a file and pass the path"
        ) from None


def check_weights_source(source: str) -> None:
    """A one-line error unless ``source`` is a file or a torchvision weights name
    (nothing is read or downloaded: for checks before a job starts)."""
    if not Path(source).expanduser().is_file():
        _registry_weights(source, None)


def _registry_weights(source: str, enum: type[WeightsEnum] | None) -> WeightsEnum:
    example = (
        f"{enum.__name__}.{next(iter(enum.__members__))}"
        if enum
        else ("ResNet18_Weights.IMAGENET1K_V1")
    )
    if "_Weights." not in source and (enum is None or source not in enum.__members__):
        raise VidrayError(
            f"pretrained weights file not found: {source} (give a state_dict saved with "
            f"torch.save, or a torchvision weights name such as {example})"
        )
    try:
        return enum.verify(source) if enum else get_weight(source)
    except (ValueError, KeyError):
        raise VidrayError(f"unknown torchvision weights {source!r} (e.g. {example})") from None
