"""Batches onto the device as the model's input, and models into the matching layout.

Clips travel as uint8 (4x smaller than float32) and are converted here, after
the transfer: (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float, normalised with
the ImageNet statistics that 2D-pretrained weights expect. Training,
evaluation, detection and serving all take their tensors from here, so a model
sees the same input wherever it runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def frames_to_input(frames: Tensor) -> Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32, normalised."""
    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean).div_(std)


def flow_to_input(flow: Tensor) -> Tensor:
    """(B, L, H, W, 2) quantized uint8 -> (B, 2L, H, W) float in units of ``flow.bound``.

    Dequantizing to -1..1 rather than to pixels keeps the input scale of flow
    models independent of the bound chosen at ingest.
    """
    x = flow.float().mul_(2.0 / 255.0).sub_(1.0)
    b, L, h, w, _ = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(b, 2 * L, h, w)


def model_input(batch: dict[str, Tensor], device: torch.device) -> Tensor | dict[str, Tensor]:
    """The tensor (or dict, for flow-reading models) a model's forward takes."""
    frames = frames_to_input(batch["frames"].to(device, non_blocking=True))
    if "flow" not in batch:
        return frames
    flow = flow_to_input(batch["flow"].to(device, non_blocking=True))
    return {"rgb": frames, "flow": flow}


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


def for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in eval mode, in the layout `to_device` gives its inputs."""
    model = model.to(device).eval()
    return channels_last_3d(model) if device.type == "cuda" else model
