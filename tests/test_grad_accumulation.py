"""Gradient accumulation under DDP: gradients are all-reduced once per optimiser step.

Equal replicas after training do not show it (DDP keeps them equal with or
without ``no_sync``); DDP's communication hook does: it runs once per gradient
bucket each time DDP all-reduces. Two gloo processes run the training loop's
`train_epoch` on their own batches, with a hook that counts and then all-reduces.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from vidray.config import load_config
from vidray.models import build
from vidray.train.loop import make_optimizer, train_epoch
from vidray.train.schedule import Scheduler
from vidray.train.tasks import task_of

BATCHES = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ACCUMULATION = {1: 5, 2: 3, 4: 2}  # batches per step -> optimiser steps in 5 batches


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(rank)  # each rank its own data, as a shard
    batches = [
        {
            "frames": torch.randint(
                0, 256, (2, 4, 16, 16, 3), dtype=torch.uint8, generator=generator
            ),
            "label": torch.randint(0, 3, (2,), generator=generator),
        }
        for _ in range(BATCHES)
    ]
    for accum in ACCUMULATION:
        cfg = load_config(None, [f"train.grad_accum={accum}"])
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(build("simple3d", num_classes=3, width=4))
        reduces = []

        def counting_allreduce(state, bucket, reduces=reduces):
            reduces.append(bucket.index())
            return allreduce_hook(state, bucket)

        model.register_comm_hook(dist.group.WORLD, counting_allreduce)
        optimizer = make_optimizer(cfg.optim, model.parameters())
        scheduler = Scheduler(optimizer, cfg.optim, epochs=1, steps_per_epoch=BATCHES)
        device = torch.device("cpu")
        train_epoch(model, batches, optimizer, scheduler, 0, cfg, device, task=task_of(cfg))
        out[(rank, accum)] = {
            "reduces": len(reduces),
            "buckets": len(set(reduces)),
            "steps": scheduler.global_step,
            "weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
        }
    dist.destroy_process_group()


@pytest.mark.slow  # a subprocess
def test_gradients_are_all_reduced_once_per_optimiser_step():
    """5 batches: with accumulation over 2, steps after batches 2, 4 and the last."""
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_rank, args=(_free_port(), shared), nprocs=2, join=True)
        out = dict(shared)
    for accum, steps in ACCUMULATION.items():
        for rank in (0, 1):
            assert out[(rank, accum)]["steps"] == steps, accum
            assert out[(rank, accum)]["reduces"] == steps * out[(rank, accum)]["buckets"], accum
        replicas = out[(0, accum)]["weights"], out[(1, accum)]["weights"]
        torch.testing.assert_close(*replicas, rtol=0, atol=0)
