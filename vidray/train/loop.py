"""`train_loop_per_worker`: the one training loop, run by every Ray Train worker.

    for epoch:
        train shard (Ray Data, new random clips each epoch) -> DDP forward/backward
        all-reduce train loss / accuracy
        rank 0: val clips -> clip and video accuracy; checkpoint; MLflow metrics
        ray.train.report(metrics, checkpoint from rank 0)

Validation runs on rank 0 with the unwrapped module: a DDP forward on one
rank alone would wait forever for the others' buffer broadcast.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidray import tracking
from vidray.config import Config, OptimConfig
from vidray.models import build
from vidray.models.registry import arguments
from vidray.train.checkpoints import load_checkpoint, save_checkpoint
from vidray.train.inputs import model_input, model_kwargs
from vidray.train.metrics import classification_metrics


def make_optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The configured family, built for the clip the loader will give it."""
    kwargs = model_kwargs(cfg.model)
    # Families whose layers depend on the clip (early fusion's 3T-channel conv, the
    # temporal stream's 2L channels) take its length under the InputSpec's names.
    takes = arguments(cfg.model.name)
    if "frames" in takes:
        kwargs["frames"] = cfg.clip.T
    if "flow" in takes:
        kwargs["flow"] = cfg.flow.L
    return build(cfg.model.name, num_classes=num_classes, **kwargs)


@torch.no_grad()
def predict(model: nn.Module, batches: Any, device: torch.device) -> dict[str, np.ndarray]:
    """Logits, labels and video keys of every clip in ``batches`` (torch batches)."""
    model.eval()
    logits, labels, keys = [], [], []
    for batch in batches:
        logits.append(model(model_input(batch, device)).float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        keys.append(np.asarray(batch["video_key"]))
    if not logits:
        return {"logits": np.zeros((0, 0)), "labels": np.zeros(0, np.int64), "keys": np.zeros(0)}
    return {
        "logits": np.concatenate(logits),
        "labels": np.concatenate(labels),
        "keys": np.concatenate(keys),
    }


def epoch_line(metrics: dict[str, float], epochs: int) -> str:
    """The progress line rank 0 prints after each epoch."""
    val = metrics.get(tracking.VAL_VIDEO_TOP1, float("nan"))
    speed = metrics[tracking.CLIPS_PER_SECOND]
    return (
        f"train: epoch {metrics['epoch'] + 1}/{epochs}: loss {metrics[tracking.TRAIN_LOSS]:.3f}, "
        f"train clip top-1 {metrics[tracking.TRAIN_CLIP_TOP1]:.3f}, val video top-1 {val:.3f} "
        f"({metrics[tracking.EPOCH_SECONDS]:.1f} s, {speed:.0f} clips/s)"
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(loop_config["config"])
    classes: list[str] = loop_config["classes"]
    uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]
    # One line per epoch (below) says more than Ray Train's line per report.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    # Workers share cores with Ray Data's readers: one intra-op thread each.
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    model = build_model(cfg, len(classes))
    optimizer = make_optimizer(cfg.optim, model.parameters())
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state, _ = load_checkpoint(directory)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
    model = ray.train.torch.prepare_model(model)
    bare_model = model.module if hasattr(model, "module") else model

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.monotonic()
        model.train()
        # loss sum, correct, count: summed over ranks after the epoch
        totals = torch.zeros(3, dtype=torch.float64)
        for batch in train_shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            local_shuffle_buffer_size=cfg.train.shuffle_buffer or None,
            device="cpu",
        ):
            labels = batch["label"].to(device)
            logits = model(model_input(batch, device))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(labels)
            totals += torch.tensor(
                [loss.item() * n, (logits.argmax(1) == labels).sum().item(), n],
                dtype=torch.float64,
            )
        if world > 1:
            torch.distributed.all_reduce(totals)
        seconds = time.monotonic() - t0
        count = max(totals[2].item(), 1.0)
        metrics = {
            "epoch": epoch,
            tracking.TRAIN_LOSS: totals[0].item() / count,
            tracking.TRAIN_CLIP_TOP1: totals[1].item() / count,
            tracking.EPOCH_SECONDS: seconds,
            tracking.CLIPS_PER_SECOND: totals[2].item() / seconds,
        }
        if rank == 0:
            out = predict(
                bare_model,
                val_data.iter_torch_batches(batch_size=cfg.train.batch_size, device="cpu"),
                device,
            )
            metrics.update(
                classification_metrics(out["logits"], out["labels"], out["keys"], prefix="val")
            )
            tracking.log_metrics(
                uri, run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch
            )
            # Ray Train sends print() both to its logger and to stdout; writing to the
            # process's own stdout shows the line once, forwarded to the driver.
            print(epoch_line(metrics, cfg.train.epochs), file=sys.__stdout__, flush=True)
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(
                    directory,
                    model=bare_model,
                    optimizer=optimizer,
                    epoch=epoch,
                    cfg=cfg,
                    classes=classes,
                    run_id=run_id,
                    metrics=metrics,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)
