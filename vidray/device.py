"""Batches onto the device as the model's input, and models into the matching layout.

Clips travel as uint8 (4x smaller than float32) and are converted here, after
the transfer: (B, 3, T, H, W) float, normalised with the statistics the model's
weights were trained with (`Normalization`, from ``clip.mean`` / ``clip.std``).
Training, evaluation, detection and serving all take their tensors from here, so
a model sees the same input wherever it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vidray.config import ClipConfig


@dataclass(frozen=True)
class Normalization:
    """Per-channel (R, G, B) mean and std that frames in [0, 1] are normalised with."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, clip: ClipConfig) -> Normalization:
        """A run's normalisation: ``clip.mean`` / ``clip.std`` (3 values each, checked
        with the run's other settings), ImageNet's where unset (what every run used
        before they existed)."""
        return cls.of_values(clip.mean, clip.std)

    @classmethod
    def of_values(
        cls,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        default: Normalization | None = None,
    ) -> Normalization:
        """From 3 means and 3 stds; ``default``'s (ImageNet's if None) where one is None."""
        default = default or IMAGENET
        return cls(_triple(mean or default.mean), _triple(std or default.std))


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


# What torchvision's 2D ImageNet weights (and so inflated ones) were trained with.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# PySlowFast's and PyTorchVideo's Kinetics recipes (DATA.MEAN / DATA.STD).
PYSLOWFAST = Normalization((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))


def frames_to_input(frames: Tensor, normalization: Normalization) -> Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32, normalised."""
    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(normalization.mean, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(normalization.std, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean).div_(std)


def flow_to_input(flow: Tensor) -> Tensor:
    """(B, L, H, W, 2) quantized uint8 -> (B, 2L, H, W) float in units of ``flow.bound``.

    Dequantizing to -1..1 rather than to pixels keeps the input scale of flow
    models independent of the bound chosen at ingest.
    """
    x = flow.float().mul_(2.0 / 255.0).sub_(1.0)
    b, L, h, w, _ = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(b, 2 * L, h, w)


def model_input(
    batch: dict[str, Tensor], device: torch.device, normalization: Normalization
) -> Tensor | dict[str, Tensor]:
    """The tensor (or dict, for flow-reading models) a model's forward takes."""
    frames = frames_to_input(batch["frames"].to(device, non_blocking=True), normalization)
    if "flow" not in batch:
        return frames
    flow = flow_to_input(batch["flow"].to(device, non_blocking=True))
    return {"rgb": frames, "flow": flow}


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast where asked for (fast on CUDA; allowed on CPU, where it is slow)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def to_device(batch: dict[str, Any], device: torch.device, normalization: Normalization) -> Any:
    """The model's input on ``device``, 5-D clips channels-last: the layout the
    permuted uint8 frames already have, and the one cuDNN's 3D convolutions are
    fastest in (see `channels_last`)."""
    x = model_input(batch, device, normalization)

    def layout(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t

    return {k: layout(v) for k, v in x.items()} if isinstance(x, dict) else layout(x)


def channels_last(model: nn.Module) -> nn.Module:
    """Every convolution's weight channels-last (2D and 3D), as `to_device`'s clips are.

    Convolutions on channels-last inputs give channels-last weight gradients. A
    weight in the other layout has gradients of other strides, which DDP copies
    into its buckets every step (and warns "Grad strides do not match bucket view
    strides"). That holds even for 1x1 kernels, which count as contiguous in both
    layouts: ``.contiguous(memory_format=...)`` leaves them as they are, so each
    weight is copied into a fresh channels-last tensor. ``model.to(memory_format=...)``
    cannot do it either: it fails on models that mix 2D and 3D convolutions.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            weight = module.weight
            layout = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
            weight.data = torch.empty_like(weight, memory_format=layout).copy_(weight.data)
    return model


def for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in eval mode, in the layout `to_device` gives its inputs."""
    return channels_last(model.to(device).eval())
