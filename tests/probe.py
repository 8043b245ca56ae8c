"""A training task for tests that need to see inside the Ray Train workers: ``classify``
as it is, plus files a test reads and a pause a test lifts.

Installed in place of ``classify`` for one test (`install`); the driver hands it to
the workers like any task, and Ray ships this module by value, since workers cannot
import tests/. Nothing of it is in the library.

- ``rank<r>.checksum``: ``<batches seen> <hash of the replica's parameters>``, written
  before each training step of rank ``r``, and ``rank<r>.node``, its Ray node.
- ``pause_epoch``: at the start of that epoch each rank writes its pid to
  ``rank<r>.pid`` and waits (up to ``pause_seconds``) for a ``release`` file, so a
  test can kill a worker or stop the run at a known point; a restarted worker
  finds ``release`` and goes on.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import cloudpickle
from torch import nn

from vidray.config import Config
from vidray.train import tasks
from vidray.train.loop import shuffle_seed
from vidray.train.tasks import Classify

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def param_checksum(model: nn.Module) -> str:
    """A hash of every parameter's bytes: equal on all ranks iff the replicas are identical."""
    module = model.module if hasattr(model, "module") else model
    digest = hashlib.sha256()
    for param in module.parameters():
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Probe(Classify):
    dir: str = ""
    pause_epoch: int = 0  # 0: never
    pause_seconds: float = 60

    def batches(
        self, shard: Any, cfg: Config, *, train: bool, pin: bool, seed: int | None = None
    ) -> Any:
        if train and self.pause_epoch and self._epoch(cfg, seed) == self.pause_epoch:
            folder = Path(self.dir)
            _publish(folder / f"rank{_rank()}.pid", str(os.getpid()))
            deadline = time.monotonic() + self.pause_seconds
            while not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        return super().batches(shard, cfg, train=train, pin=pin, seed=seed)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], cfg: Config, device: torch.device
    ) -> tuple[torch.Tensor, int, int]:
        folder, rank = Path(self.dir), _rank()
        seen = folder / f"rank{rank}.seen"
        count = int(seen.read_text()) + 1 if seen.exists() else 1
        seen.write_text(str(count))
        (folder / f"rank{rank}.checksum").write_text(f"{count} {param_checksum(model)}")
        (folder / f"rank{rank}.node").write_text(ray.get_runtime_context().get_node_id())
        return super().loss(model, batch, cfg, device)

    @staticmethod
    def _epoch(cfg: Config, seed: int | None) -> int:
        """The epoch whose shuffle seed the loop passed (the loop's own `shuffle_seed`)."""
        rank = _rank()
        epochs = range(1, cfg.train.epochs + 1)
        return next((e for e in epochs if shuffle_seed(cfg.train.seed, e, rank) == seed), 0)


def _publish(path: Path, text: str) -> None:
    """``text`` in ``path`` in one step: a test that sees the file reads all of it."""
    part = path.with_suffix(".part")
    part.write_text(text)
    part.replace(path)


def _rank() -> int:
    return ray.train.get_context().get_world_rank()


def install(monkeypatch: Any, probe: Probe) -> Probe:
    """``probe`` trains ``train.task=classify`` until the test ends."""
    monkeypatch.setitem(tasks._TASKS, "classify", probe)
    return probe
