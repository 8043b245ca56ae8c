"""Checkpoints: one directory holding ``state.pt`` (weights, optimiser, LR
scheduler, epoch, global step, RNG) and ``meta.yaml`` (config, classes, MLflow
run), readable without Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vidray import storage
from vidray.config import Config
from vidray.errors import VidrayError

STATE_FILE = "state.pt"
META_FILE = "meta.yaml"


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: dict[str, Any],
    epoch: int,
    cfg: Config,
    classes: list[str],
    run_id: str,
    metrics: dict[str, float],
    dataset: dict[str, Any] | None = None,
) -> Path:
    """``dataset`` is the training data's dataset.yaml (storage parameters, class ids):
    what inference on a new video must reproduce (`vidray detect`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler,
            "epoch": epoch,
            "global_step": scheduler["global_step"],
            "torch_rng": torch.get_rng_state(),
        },
        directory / STATE_FILE,
    )
    meta = {
        "epoch": epoch,
        "global_step": scheduler["global_step"],
        "run_id": run_id,
        "classes": classes,
        "metrics": metrics,
        "config": cfg.to_dict(),
        "dataset": dataset or {},
    }
    (directory / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of a checkpoint directory, local or a URI (``s3://...``); a
    one-line error if it is not one."""
    with storage.local_dir(directory) as local:
        if not (local / STATE_FILE).is_file() or not (local / META_FILE).is_file():
            raise VidrayError(
                f"{directory} is not a vidray checkpoint (needs {STATE_FILE} and {META_FILE})"
            )
        meta = yaml.safe_load((local / META_FILE).read_text())
        state = torch.load(local / STATE_FILE, map_location="cpu", weights_only=False)
    return state, meta


def check_resumable(directory: str | Path, *, model: nn.Module, classes: list[str]) -> dict:
    """The meta of checkpoint ``directory`` if ``model`` can continue from it, else a
    one-line error naming what differs (checked in the driver, before workers start)."""
    if not storage.exists(directory):
        raise VidrayError(f"train.resume_from={directory}: no such checkpoint directory")
    state, meta = load_checkpoint(directory)
    if meta["classes"] != classes:
        raise VidrayError(
            f"train.resume_from={directory} was trained on classes {meta['classes']}, "
            f"the data has {classes}: resume on the same dataset"
        )
    name = meta["config"]["model"]["name"]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
    if ours != theirs:
        differs = sorted(set(ours.items()) ^ set(theirs.items()))[:1]
        raise VidrayError(
            f"train.resume_from={directory} holds a {name!r} model that does not fit the "
            f"configured one (first difference: {differs[0][0] if differs else 'keys'}): "
            "use the checkpoint's model.* settings"
        )
    return meta
