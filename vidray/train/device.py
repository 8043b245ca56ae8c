"""Getting batches and models onto the training device, the same for every task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vidray.train.inputs import model_input


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast where asked for (fast on CUDA; allowed on CPU, where it is slow)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def to_device(batch: dict[str, Any], device: torch.device) -> Any:
    """The model's input on ``device``; 5-D clips channels-last on CUDA, where cuDNN's
    3D convolutions are fastest in that layout (a no-op on CPU)."""
    x = model_input(batch, device)
    if device.type != "cuda":
        return x

    def layout(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t

    return {k: layout(v) for k, v in x.items()} if isinstance(x, dict) else layout(x)


def channels_last_3d(model: nn.Module) -> nn.Module:
    """5-D (3D conv) weights in channels-last layout, to match `to_device`'s inputs.

    ``model.to(memory_format=...)`` would also try to convert the 4-D weights
    of 2D convs (two-stream, single-frame models) and fail, hence per tensor.
    """
    for param in model.parameters():
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    return model
