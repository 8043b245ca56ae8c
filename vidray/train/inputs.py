"""What a model reads: its clip parameters, and uint8 batches turned into its input.

Clips travel as uint8 (4x smaller than float32) and are converted here, after
the transfer: (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float, normalised with
the ImageNet statistics that 2D-pretrained weights expect.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import Tensor

from vidray.config import Config, ModelConfig
from vidray.errors import VidrayError
from vidray.models import entry

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


def resolve_inputs(cfg: Config) -> Config:
    """Fill the clip parameters left unset (None) with what the model declares.

    ``clip.T``, ``clip.crop`` and ``flow.L`` default to the model's `InputSpec`,
    so ``model.name=two_stream`` alone gets one RGB frame and a stack of 10
    flow fields. The resolved values are what runs log and checkpoints keep.
    """
    spec = entry(cfg.model.name).input
    if spec.flow == 0 and cfg.flow.L:
        raise VidrayError(f"model {cfg.model.name!r} reads no optical flow: unset flow.L")
    flow_L = (cfg.flow.L or spec.flow) if spec.flow else 0
    return replace(
        cfg,
        clip=replace(cfg.clip, T=cfg.clip.T or spec.frames, crop=cfg.clip.crop or spec.crop),
        flow=replace(cfg.flow, L=flow_L),
    )


def model_kwargs(model: ModelConfig) -> dict[str, object]:
    """The knobs set in ``model.*`` (None and "" mean the family's default)."""
    return {
        f.name: getattr(model, f.name)
        for f in fields(model)
        if f.name != "name" and getattr(model, f.name) not in (None, "")
    }
