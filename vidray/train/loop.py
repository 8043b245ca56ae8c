"""`train_loop_per_worker`: the one training loop, run by every Ray Train worker.

    seed the model init (train.seed); restore model, optimiser, LR schedule, epoch
        (a restart or train.resume_from)
    for epoch 1, 2, ... (numbered from 1 wherever a user reads them):
        rank 0: set the epoch clock (the read tasks draw the epoch's clips from it)
        train shard (Ray Data, new clips each epoch, seeded) -> DDP forward/backward,
            gradient accumulation, clipping, bf16 autocast, LR set every step
        all-reduce train loss / accuracy
        rank 0: validation (video accuracy, or frame-mAP); MLflow metrics (step: epoch);
            checkpoint epoch_NNN, scored so that Ray keeps the best (`selection`)
        ray.train.report(metrics, checkpoint from rank 0)

What differs between classification and detection (the model, the batches,
the loss, validation) is the task's (`vidray.train.tasks`); the loop is one.
Validation runs on rank 0 with the unwrapped module: a DDP forward on one
rank alone would wait forever for the others' buffer broadcast.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from vidray import tracking
from vidray.checkpoints import load_checkpoint, save_checkpoint
from vidray.config import Config, OptimConfig
from vidray.device import channels_last
from vidray.train.schedule import Scheduler
from vidray.train.selection import SCORE, BestSoFar, select_best
from vidray.train.tasks import Task, task_of


def make_optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The configured model for ``train.task``: a classifier or an action detector."""
    return task_of(cfg).build(cfg, num_classes)


def with_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """``(item, is_last)`` pairs: the epoch's last batch must always sync and step."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True


def train_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    epochs_done: int,
    cfg: Config,
    device: torch.device,
    *,
    task: Task,
) -> tuple[torch.Tensor, float]:
    """One pass over this rank's shard: (loss sum, hits, count) and the first step's LR.
    ``epochs_done``: the epochs before this one (the schedule's progress at its start).

    With ``train.grad_accum`` > 1, gradients of the accumulating batches stay
    local (DDP ``no_sync``) and are all-reduced once, on the batch that steps.
    """
    model.train()
    accum = cfg.train.grad_accum
    totals = torch.zeros(3, dtype=torch.float64)
    first_lr = float("nan")
    steps = 0
    for i, (batch, last) in enumerate(with_last(batches)):
        stepping = last or (i + 1) % accum == 0
        local = not stepping and isinstance(model, nn.parallel.DistributedDataParallel)
        sync = model.no_sync() if local else contextlib.nullcontext()
        with sync:
            loss, hits, n = task.loss(model, batch, cfg, device)
            (loss / accum).backward()
        if stepping:
            lr = scheduler.step(epochs_done, steps)
            first_lr = lr if steps == 0 else first_lr
            if cfg.train.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        totals += torch.tensor([loss.item() * n, hits, n], dtype=torch.float64)
    return totals, first_lr


def restore(
    checkpoint: Any, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Scheduler
) -> int:
    """Load a Ray Train checkpoint (a restart, or train.resume_from); the epochs it has done."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state, _ = load_checkpoint(directory)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    # The state, but this run's settings: a PBT trial continues another trial's
    # checkpoint with perturbed optim.* values (the rate is set before every step).
    for group in optimizer.param_groups:
        group["weight_decay"] = scheduler.cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = scheduler.cfg.momentum
    if "scheduler" in state:  # checkpoints from before the schedule existed have none
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"]


def best_so_far(restarted: bool, metric: str) -> BestSoFar:
    """A fresh record, or after a restart the best of what Ray kept of this run (Ray
    keeps the best by the rule, `vidray.train.selection`). A run resumed from another
    run's checkpoint starts a fresh record: its best is among its own checkpoints."""
    import ray.train

    best = BestSoFar(metric)
    if restarted:
        kept = [(c.checkpoint, c.metrics) for c in ray.train.get_all_reported_checkpoints()]
        if kept:
            best.best = select_best(kept, metric)[1]
    return best


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's local shuffle in one epoch: new every epoch, the same in
    every run with ``train.seed``."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def checkpoint_name(epoch: int) -> str:
    """The folder of epoch ``epoch``'s checkpoint in the run's storage: ``epoch_003``."""
    return f"epoch_{epoch:03d}"


def epoch_line(metrics: dict[str, float], epochs: int, *, hits: str, metric: str) -> str:
    """The progress line rank 0 prints after each epoch (``hits`` and ``metric``: the
    task's training accuracy and validation metric names)."""
    val = metrics.get(metric, float("nan"))
    speed = metrics[tracking.CLIPS_PER_SECOND]
    return (
        f"train: epoch {metrics['epoch']}/{epochs}: loss {metrics[tracking.TRAIN_LOSS]:.3f}, "
        f"{hits} {metrics[hits]:.3f}, {metric} {val:.3f}, lr {metrics[tracking.TRAIN_LR]:.2e} "
        f"({metrics[tracking.EPOCH_SECONDS]:.1f} s, {speed:.0f} clips/s)"
    )


def quiet_train_reports() -> None:
    """One line per epoch (`epoch_line`) says more than Ray Train's INFO line per report,
    which prints the whole TrainingReport. Ray Train V2 logs it under its module's file
    path, not under ``ray.train``, so that logger is named by its module."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    with contextlib.suppress(ImportError, AttributeError):  # another Ray version
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(loop_config["config"])
    # The task travels by reference: unpickling it imported its package, which
    # registered it in this process too (`task_of`, `build_model`).
    task: Task = loop_config["task"]
    classes: list[str] = loop_config["classes"]
    uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]
    quiet_train_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    # Workers share cores with Ray Data's readers: one intra-op thread each.
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    model, optimizer, scheduler, best, done = start_or_resume(cfg, task, loop_config, device, rank)
    model = ray.train.torch.prepare_model(model)
    bare_model = model.module if hasattr(model, "module") else model

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    pin = device.type == "cuda"  # pinned host memory makes the copy asynchronous; CUDA only
    clock = loop_config["epoch_clock"]
    for epoch in range(done + 1, cfg.train.epochs + 1):
        if rank == 0:
            # Before the first batch is asked for: the epoch's read tasks start only once
            # every rank, this one included, asks (Ray Data's streaming split).
            ray.get(clock.set.remote(epoch))
        t0 = time.monotonic()
        seed = shuffle_seed(cfg.train.seed, epoch, rank)
        batches = task.batches(train_shard, cfg, train=True, pin=pin, seed=seed)
        totals, first_lr = train_epoch(
            model, batches, optimizer, scheduler, epoch - 1, cfg, device, task=task
        )
        own_clips = totals[2].item()  # before the sum over workers
        if world > 1:
            torch.distributed.all_reduce(totals)
        metrics = epoch_metrics(
            epoch, totals, first_lr, scheduler, time.monotonic() - t0, hits=task.hits
        )
        metrics[tracking.WORKER_CLIPS] = own_clips  # logged per worker (`worker_reports`)
        if rank != 0:
            ray.train.report(metrics)
            continue
        metrics.update(task.validate(bare_model, val_data, cfg, device, classes))
        per_run = {k: v for k, v in metrics.items() if k not in ("epoch", tracking.WORKER_CLIPS)}
        tracking.log_metrics(uri, run_id, per_run, step=epoch)
        state = {"model": bare_model, "optimizer": optimizer, "scheduler": scheduler}
        report_with_checkpoint(metrics, state, cfg, loop_config, score=best.update(metrics))
        # After the report, so a line on screen means its checkpoint is stored. Ray
        # Train sends print() both to its logger and to stdout; writing to the process's
        # own stdout shows the line once, forwarded to the driver.
        line = epoch_line(metrics, cfg.train.epochs, hits=task.hits, metric=task.metric)
        print(line, file=sys.__stdout__, flush=True)


def start_or_resume(
    cfg: Config, task: Task, loop_config: dict[str, Any], device: torch.device, rank: int
) -> tuple[nn.Module, torch.optim.Optimizer, Scheduler, BestSoFar, int]:
    """The model, optimiser and schedule on ``device``, the best epoch so far, and the
    epochs done: fresh, or restored from the checkpoint this run continues."""
    import ray.train

    # On the device before the optimiser exists, so restored optimiser state lands there too.
    model = channels_last(task.build(cfg, len(loop_config["classes"])).to(device))
    optimizer = make_optimizer(cfg.optim, model.parameters())
    scheduler = Scheduler(optimizer, cfg.optim, cfg.train.epochs, loop_config["steps_per_epoch"])
    # A restarted worker group gets the last reported checkpoint; a first start
    # gets train.resume_from (a path every worker can read), or nothing.
    checkpoint = ray.train.get_checkpoint()
    best = best_so_far(checkpoint is not None and rank == 0, task.metric)
    if checkpoint is None and loop_config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(loop_config["resume_from"])  # a path or a URI
    done = restore(checkpoint, model, optimizer, scheduler)
    return model, optimizer, scheduler, best, done


def epoch_metrics(
    epoch: int,
    totals: torch.Tensor,
    first_lr: float,
    scheduler: Scheduler,
    seconds: float,
    *,
    hits: str,
) -> dict[str, float]:
    """What every rank reports of an epoch: ``totals`` (loss sum, items right, items,
    summed over ranks) as means, the rate, the step count and the speed."""
    count = max(totals[2].item(), 1.0)
    return {
        "epoch": epoch,
        tracking.TRAIN_LOSS: totals[0].item() / count,
        hits: totals[1].item() / count,
        tracking.TRAIN_LR: first_lr,
        tracking.TRAIN_STEP: scheduler.global_step,
        tracking.EPOCH_SECONDS: seconds,
        tracking.CLIPS_PER_SECOND: totals[2].item() / seconds,
    }


def report_with_checkpoint(
    metrics: dict[str, float],
    state: dict[str, Any],
    cfg: Config,
    loop_config: dict[str, Any],
    *,
    score: int,
) -> None:
    """Rank 0's report of an epoch: its metrics, the checkpoint of ``state`` (model,
    optimizer, scheduler) in ``epoch_NNN``, and the score Ray keeps checkpoints by."""
    import ray.train

    epoch = int(metrics["epoch"])
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(
            directory,
            model=state["model"],
            optimizer=state["optimizer"],
            scheduler=state["scheduler"].state_dict(),
            epoch=epoch,
            cfg=cfg,
            classes=loop_config["classes"],
            dataset=loop_config.get("dataset"),
            run_id=loop_config["run_id"],
            metrics=metrics,
        )
        ray.train.report(
            {**metrics, SCORE: score},
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoint_name(epoch),
        )
