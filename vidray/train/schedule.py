"""The learning-rate schedule: linear warm-up, then cosine, step or constant.

The schedule is a pure function of *progress in epochs* (a float: 2.25 is a
quarter into the third epoch), not of a step count. Shards of a streamed
dataset differ by a batch or two between ranks and epochs, so a step count is
only an estimate; progress in epochs is exact at every epoch boundary, which
is what makes a resumed run continue the schedule where it stopped.

    factor
    1 |    ______
      |   /      ``--.._            cosine: 1 -> 0 over the epochs after warm-up
      |  /              ``-.        step:   x gamma every step_epochs
      | /                   `.      constant: 1
      |/_____________________`__
      0   warmup                epochs
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vidray.config import OptimConfig


def lr_factor(cfg: OptimConfig, progress: float, epochs: int) -> float:
    """Multiplier of ``optim.lr`` at ``progress`` epochs into a run of ``epochs``."""
    warmup = cfg.warmup_epochs
    if warmup > 0 and progress < warmup:
        return max(progress, 0.0) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        # Steps count from the end of warm-up, so warm-up never eats the first decay.
        return cfg.gamma ** int((progress - warmup) // max(cfg.step_epochs, 1))
    span = max(epochs - warmup, 1e-12)
    done = min(max((progress - warmup) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * done))


class Scheduler:
    """Sets the optimiser's learning rate before every optimiser step.

    ``steps_per_epoch`` is the driver's estimate, used only to place a step
    inside its epoch (so warm-up is a smooth ramp, not a staircase); the epoch
    itself is always exact. The state (global step, last progress) goes into
    checkpoints so that a resumed run logs the same step numbers.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
    ) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.epochs = epochs
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.global_step = 0
        self.progress = 0.0

    def step(self, epoch: int, step_in_epoch: int) -> float:
        """Set and return the learning rate for optimiser step ``step_in_epoch`` of ``epoch``.

        Progress is taken at the *end* of the step, so the very first step of a
        warm-up trains with a small positive rate instead of zero.
        """
        within = min((step_in_epoch + 1) / self.steps_per_epoch, 1.0)
        self.progress = epoch + within
        lr = self.cfg.lr * lr_factor(self.cfg, self.progress, self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.global_step += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.progress = float(state["progress"])
