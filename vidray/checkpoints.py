"""Checkpoints: one directory holding ``state.pt`` (weights, optimiser, LR
scheduler, epoch, global step, RNG) and ``meta.yaml`` (config, classes, MLflow
run), readable without Ray.

Both files carry ``format`` (`FORMAT`): 2 since ``epoch`` counts the epochs done
(1 after the first); checkpoints without it numbered the last epoch from 0.
"""

from __future__ import annotations

import pickle
import re
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
FORMAT = 2


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
            "format": FORMAT,
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
        "format": FORMAT,
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
        state = _load_state(local / STATE_FILE, shown=f"{directory}/{STATE_FILE}")
    return state, meta


def _load_state(path: Path, *, shown: str) -> dict[str, Any]:
    """``state.pt`` as plain tensors and containers. ``weights_only`` unpickles nothing
    else, so a checkpoint from a shared bucket cannot run code on this machine; one
    that needs more was not written by vidray (or was tampered with) and is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise VidrayError(
            f"{shown} holds more than weights{what}: refused, as loading it could run code; "
            "use a checkpoint written by vidray training"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VidrayError(f"{shown} is damaged or incomplete ({reason})") from None


def check_resumable(
    directory: str | Path, *, model: nn.Module, classes: list[str], epochs: int
) -> dict:
    """The meta of checkpoint ``directory`` if ``model`` can continue from it up to
    ``epochs`` (``train.epochs``), else a one-line error naming what differs (checked in
    the driver, before workers start)."""
    if not storage.exists(directory):
        raise VidrayError(f"train.resume_from={directory}: no such checkpoint directory")
    state, meta = load_checkpoint(directory)
    if meta.get("format") != FORMAT:
        raise VidrayError(
            f"train.resume_from={directory} was written by an older vidray: its epochs count "
            "from 0; start a new run (vidray evaluate still reads it)"
        )
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
    if meta["epoch"] >= epochs:
        raise VidrayError(
            f"train.resume_from={directory} has already trained {meta['epoch']} epochs and "
            f"train.epochs={epochs}: raise train.epochs above {meta['epoch']} to continue"
        )
    return meta
