"""Multiply-accumulates and parameters of a model, for the tests and the `vidray models` table.

What is counted (torch.utils.flop_counter.FlopCounterMode, one forward pass):
  - convolutions (any dimension, grouped): one MAC per weight element
    per output position and batch item; bias additions are not counted;
  - matrix products (mm, addmm, bmm, baddbmm): m·n·k MACs. That covers linear
    layers, non-local affinities, attention, and nn.LSTMCell / nn.GRUCell;
  - scaled-dot-product attention kernels.
Not counted: normalisation, activations, pooling, softmax, element-wise adds,
padding, resampling, and the fused nn.LSTM / nn.GRU / nn.RNN layers (aten.lstm
and friends are not in FlopCounterMode's table: they count as 0, so a recurrent
model counted this way reports its CNN alone unless it steps a cell).
FlopCounterMode reports 2 FLOPs per MAC, so its total is halved.

PyTorchVideo's model zoo "GFLOPs" are fvcore totals on 256×256 test crops, not
224×224, and not all counted alike (checked against fvcore 0.1.5 on PyTorchVideo
0.1.5's networks; `tests/models/test_flops.py` pins what vidray counts):
  - I3D R50 37.53, SlowFast R50 4×16 36.69 and SlowFast R101 8×8 127.20 are
    fvcore's total in train mode: convolutions and linear layers as here (37.10,
    36.10, 125.91), plus 2 (train) per normalised element of every batch norm;
  - SlowFast R50 8×8's 65.71 counts convolutions and linear layers only (the
    same 65.71 here).

The count depends only on shapes, so it can run on the meta device, where a
full-size model costs no memory and no compute:

    with torch.device("meta"):
        model = build("i3d", num_classes=400)
    count_macs(model, torch.empty(1, 3, 8, 256, 256, device="meta")) / 1e9   # ≈ 37.1
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
