"""Model registry: every trainable family by name, with the input it needs.

    model = build("simple3d", num_classes=4, width=16)
    available()  # ["simple3d", ...]

A family registers a keyword-only builder with `register`; `build` checks the
name and the keyword arguments against that builder and turns a mistake into
a one-line error listing what is valid.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from torch import nn
from torchvision.models import WeightsEnum

from vidray.config import ModelName
from vidray.errors import VidrayError

if TYPE_CHECKING:
    from vidray.models.pretrained import Pretrained

# What a family reads from the weights it starts from: the builder arguments they fix
# (e.g. SlowFast's alpha), to be built with and recorded in the run's config.
SettingsFrom = Callable[["Pretrained"], dict[str, object]]


@dataclass(frozen=True)
class InputSpec:
    """What a model reads: the loader builds exactly this clip."""

    frames: int  # default clip length T (1 for single-frame models)
    crop: int  # default square crop
    flow: int = 0  # flow fields stacked (L); 0 = RGB only


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    paper: str
    input: InputSpec
    # torchvision's weights for the family, so that model.pretrained may name one of
    # them by its short name (KINETICS400_V1); None where torchvision has none.
    weights: type[WeightsEnum] | None = None
    settings_from: SettingsFrom | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    *,
    paper: str,
    input: InputSpec,
    weights: type[WeightsEnum] | None = None,
    settings_from: SettingsFrom | None = None,
) -> Callable:
    """Class or function decorator adding a builder ``(*, num_classes, ...) -> nn.Module``."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name not in get_args(ModelName):
            raise ValueError(f"model {name!r} is not in vidray.config.ModelName: add it there")
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, paper, input, weights, settings_from)
        return builder

    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise VidrayError(f"unknown model {name!r}{hint}; available: {', '.join(available())}")
    return _REGISTRY[name]


def arguments(name: str) -> list[str]:
    """The keyword arguments a family's builder takes, besides ``num_classes``."""
    params = inspect.signature(entry(name).builder).parameters
    return [p for p in params if p != "num_classes"]


def build(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build a registered model; unknown names or arguments are one-line errors."""
    builder = entry(name).builder
    accepted = arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise VidrayError(
            f"model {name!r} takes no argument {', '.join(unknown)}; valid: {', '.join(accepted)}"
        )
    if num_classes < 1:
        raise VidrayError(f"num_classes must be >= 1, got {num_classes}")
    return builder(num_classes=num_classes, **kwargs)
