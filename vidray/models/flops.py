"""Multiply-accumulates and parameters of a model, for the tests and the `vidray models` table.

What is counted (torch.utils.flop_counter.FlopCounterMode, one forward pass):
  - convolutions (any dimension, grouped, transposed): one MAC per weight element
    per output position and batch item; bias additions are not counted;
  - matrix products (mm, addmm, bmm, baddbmm: linear layers, attention and
    non-local affinities, LSTM/GRU gates where they lower to them): m·n·k MACs;
  - scaled-dot-product attention kernels.
Not counted: normalisation, activations, pooling, softmax, element-wise adds,
padding, resampling. FlopCounterMode reports 2 FLOPs per MAC, so the total is
halved. This is the convention of the papers' and PyTorchVideo's "GFLOPs" tables
(which are multiply-adds) up to the small element-wise terms they also skip.

The count depends only on shapes, so it can run on the meta device, where a
full-size model costs no memory and no compute:

    with torch.device("meta"):
        model = build("i3d", num_classes=400)
    count_macs(model, torch.empty(1, 3, 8, 224, 224, device="meta")) / 1e9   # ≈ 37.5
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, inputs: Tensor | Mapping[str, Tensor]) -> int:
    """MACs of ``model(inputs)`` in eval mode (see the module docstring for what counts).

    `inputs` is what the model's forward takes (a clip, or a dict for two-stream
    models) with the batch size to count for; the model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
