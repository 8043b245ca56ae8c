"""Pretrained weights read from a local state_dict file or a torchvision weights name.

    read_state_dict("/models/resnet50.pt")                         # torch.save(model.state_dict())
    read_state_dict("ResNet50_Weights.IMAGENET1K_V2")              # torchvision's registry
    read_state_dict("KINETICS400_V1", enum=R3D_18_Weights)         # a short name within one enum

A registry name is fetched once into the torch hub cache and read locally from
then on; tests never fetch, they save their own weights to a file. Models, the
person detector and RAFT flow all read their weights here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor
from torchvision.models import WeightsEnum, get_weight

from vidray.errors import VidrayError


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
    weights = registry_weights(source, enum)
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise VidrayError(
            f"cannot fetch {source}: {exc}; save its state_dict to a file and pass the path"
        ) from None


def registry_weights(source: str, enum: type[WeightsEnum] | None = None) -> WeightsEnum:
    """torchvision's weights named ``source`` (a full name, or a short one within
    ``enum``), nothing fetched; a one-line error naming an example otherwise."""
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
