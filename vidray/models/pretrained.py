"""The weights a network starts from (``model.pretrained``), in whichever layout the
field publishes them, with what they say about the network and its input.

    source                                     layout        normalisation
    torchvision weights name (r3d_18, ...)     vidray        the weights' own transforms
    state_dict file, vidray's names            vidray        not recorded (None)
    PyTorchVideo state_dict or zoo file        pytorchvideo  0.45 / 0.225
    PySlowFast checkpoint {"model_state"}      pyslowfast    its cfg's DATA.MEAN / STD
                                                             (else 0.45 / 0.225)
    vidray checkpoint directory                checkpoint    its run's clip.mean / clip.std

PyTorchVideo's zoo files (``I3D_8x8_R50.pyth``, ``SLOWFAST_8x8_R50.pyth``, ...)
come in PySlowFast's checkpoint form with PyTorchVideo's names inside.

The layout is told from the keys, and the state comes back under
vidray's names (`vidray.models.converted`). A family reads what else the weights
fix (SlowFast's α and lateral kernel, I3D's time padding) through its
``settings_from`` hook (`vidray.models.registry.ModelEntry`), so that the network
it builds computes what the weights computed where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from torch import Tensor
from torchvision.models import WeightsEnum

from vidray import storage
from vidray.checkpoints import load_checkpoint
from vidray.device import PYSLOWFAST, Normalization
from vidray.models.converted import from_pyslowfast, from_pytorchvideo, is_pytorchvideo
from vidray.state_dicts import read_state_dict, registry_weights

Layout = Literal["vidray", "pytorchvideo", "pyslowfast", "checkpoint"]
# Layouts of networks trained elsewhere, with zero padding and their own recipes.
FOREIGN: tuple[Layout, ...] = ("pytorchvideo", "pyslowfast")


@dataclass(frozen=True)
class Pretrained:
    """Weights under vidray's names, where they came from, and what they were trained with."""

    source: str
    state: dict[str, Tensor]
    layout: Layout
    normalization: Normalization | None  # None: not recorded with the weights
    # What the weights record of their network: a vidray checkpoint's model.* section,
    # PySlowFast's cfg (upper-case sections), nothing for a bare state_dict.
    recorded: Mapping[str, Any] = field(default_factory=dict)


def is_checkpoint(source: str) -> bool:
    """Whether ``source`` names a vidray checkpoint directory (local or a URI)."""
    return storage.is_uri(source) or Path(source).expanduser().is_dir()


def read_pretrained(source: str, *, enum: type[WeightsEnum] | None = None) -> Pretrained:
    """The weights behind ``source`` (module docstring); every failure is one line."""
    if is_checkpoint(source):
        state, meta = load_checkpoint(source)
        config = meta.get("config", {})
        clip = config.get("clip", {})
        normalization = Normalization.of_values(clip.get("mean"), clip.get("std"))
        return Pretrained(source, state["model"], "checkpoint", normalization, config["model"])
    if not Path(source).expanduser().is_file():
        weights = registry_weights(source, enum)
        state = read_state_dict(source, enum=enum)
        return Pretrained(source, state, "vidray", weights_normalization(weights))
    state = read_state_dict(source)
    if "model_state" in state:  # PySlowFast's checkpoint form, PyTorchVideo's zoo files too
        inner, recorded = state["model_state"], _pyslowfast_cfg(state.get("cfg"))
        data = recorded.get("DATA", {})
        normalization = Normalization.of_values(data.get("MEAN"), data.get("STD"), PYSLOWFAST)
        if is_pytorchvideo(inner):
            return Pretrained(
                source, from_pytorchvideo(inner), "pytorchvideo", normalization, recorded
            )
        return Pretrained(source, from_pyslowfast(inner), "pyslowfast", normalization, recorded)
    if is_pytorchvideo(state):
        return Pretrained(source, from_pytorchvideo(state), "pytorchvideo", PYSLOWFAST)
    return Pretrained(source, state, "vidray", None)


def weights_normalization(weights: WeightsEnum) -> Normalization:
    """What torchvision's ``weights`` were trained with, from their transforms (nothing
    is fetched)."""
    transforms = weights.transforms()
    return Normalization.of_values(transforms.mean, transforms.std)


def _pyslowfast_cfg(cfg: object) -> dict[str, Any]:
    """PySlowFast's config, saved as its YAML dump; {} where absent or unreadable."""
    if not isinstance(cfg, str):
        return {}
    try:
        loaded = yaml.safe_load(cfg)
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}
