"""What a model reads: the clip parameters a config leaves to the model, and the
``model.*`` knobs its builder takes. The tensors themselves: `vidray.device`."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from vidray import storage
from vidray.config import Config, ModelConfig
from vidray.device import IMAGENET
from vidray.errors import VidrayError
from vidray.models import entry
from vidray.models.pretrained import read_pretrained, weights_normalization
from vidray.state_dicts import registry_weights


def resolve_inputs(cfg: Config) -> Config:
    """Fill the clip and model parameters left unset (None) with what the model
    declares and what its pretrained weights fix.

    ``clip.T``, ``clip.crop`` and ``flow.L`` default to the model's `InputSpec`,
    so ``model.name=two_stream`` alone gets one RGB frame and a stack of 10
    flow fields. ``clip.mean`` / ``clip.std`` and the family's settings that
    ``model.pretrained`` fixes come from the weights (`resolve_weights`). The
    resolved values are what runs log and checkpoints keep, so a checkpoint
    rebuilds its network and input without the weights it started from.
    """
    cfg = resolve_weights(cfg)
    spec = entry(cfg.model.name).input
    if spec.flow == 0 and cfg.flow.L:
        raise VidrayError(f"model {cfg.model.name!r} reads no optical flow: unset flow.L")
    flow_L = (cfg.flow.L or spec.flow) if spec.flow else 0
    return replace(
        cfg,
        clip=replace(cfg.clip, T=cfg.clip.T or spec.frames, crop=cfg.clip.crop or spec.crop),
        flow=replace(cfg.flow, L=flow_L),
    )


def resolve_weights(cfg: Config) -> Config:
    """``cfg`` with what ``model.pretrained`` (or ``detection.backbone_checkpoint``)
    fixes filled into the keys left unset:
    the normalisation the weights were trained with (`clip.mean` / `clip.std`;
    ImageNet's where they record none) and the family's settings they imply
    (`ModelEntry.settings_from`, e.g. SlowFast's α, I3D's time padding). A torchvision
    weights name is answered from its transforms without fetching anything; a file
    or checkpoint is read."""
    # A detector's backbone may start from a classification checkpoint instead.
    source = cfg.model.pretrained or cfg.detection.backbone_checkpoint
    if not source:
        return cfg
    on_disk = Path(source).expanduser().is_file() or storage.exists(source)
    if source == cfg.detection.backbone_checkpoint and not on_disk:
        raise VidrayError(f"detection.backbone_checkpoint={source}: not found")
    family = entry(cfg.model.name)
    if on_disk:
        weights = read_pretrained(source, enum=family.weights)
        # A bare state_dict records nothing: a family with torchvision weights was most
        # likely saved from them (they share one normalisation), any other from ImageNet's.
        registered = family.weights and weights_normalization(next(iter(family.weights)))
        normalization = weights.normalization or registered or IMAGENET
        settings = family.settings_from(weights) if family.settings_from else {}
    else:
        weights_named = registry_weights(source, family.weights)
        normalization, settings = weights_normalization(weights_named), {}
    unset = {k: v for k, v in settings.items() if getattr(cfg.model, k) is None}
    clip = replace(
        cfg.clip,
        mean=cfg.clip.mean or list(normalization.mean),
        std=cfg.clip.std or list(normalization.std),
    )
    return replace(cfg, model=replace(cfg.model, **unset), clip=clip)


def model_kwargs(model: ModelConfig) -> dict[str, object]:
    """The knobs set in ``model.*`` (None and "" mean the family's default)."""
    return {
        f.name: getattr(model, f.name)
        for f in fields(model)
        if f.name != "name" and getattr(model, f.name) not in (None, "")
    }
