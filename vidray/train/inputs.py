"""What a model reads: the clip parameters a config leaves to the model, and the
``model.*`` knobs its builder takes. The tensors themselves: `vidray.device`."""

from __future__ import annotations

from dataclasses import fields, replace

from vidray.config import Config, ModelConfig
from vidray.errors import VidrayError
from vidray.models import entry


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
