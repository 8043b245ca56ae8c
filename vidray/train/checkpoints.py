"""Checkpoints: one directory holding ``state.pt`` (weights, optimiser, epoch, RNG)
and ``meta.yaml`` (config, classes, MLflow run), readable without Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vidray.config import Config
from vidray.errors import VidrayError

STATE_FILE = "state.pt"
META_FILE = "meta.yaml"


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    cfg: Config,
    classes: list[str],
    run_id: str,
    metrics: dict[str, float],
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
        },
        directory / STATE_FILE,
    )
    meta = {
        "epoch": epoch,
        "run_id": run_id,
        "classes": classes,
        "metrics": metrics,
        "config": cfg.to_dict(),
    }
    (directory / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of a checkpoint directory; a one-line error if it is not one."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file() or not (directory / META_FILE).is_file():
        raise VidrayError(
            f"{directory} is not a vidray checkpoint (needs {STATE_FILE} and {META_FILE})"
        )
    meta = yaml.safe_load((directory / META_FILE).read_text())
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    return state, meta
