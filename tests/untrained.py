"""An untrained model saved as training saves its checkpoints, for tests that only
need a checkpoint to load (evaluation, detection, backbone weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidray.checkpoints import save_checkpoint
from vidray.config import Config


def save_untrained(
    directory: Path,
    model: nn.Module,
    cfg: Config,
    classes: list[str],
    *,
    run_id: str = "",
    dataset: dict[str, Any] | None = None,
) -> Path:
    """``model`` as the checkpoint of epoch 0 (an SGD optimiser's state, no steps)."""
    return save_checkpoint(
        directory,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler={"global_step": 0},
        epoch=0,
        cfg=cfg,
        classes=classes,
        run_id=run_id,
        metrics={},
        dataset=dataset,
    )
