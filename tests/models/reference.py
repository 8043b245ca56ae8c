"""Reference networks for the comparison tests: PyTorchVideo's, with random statistics."""

from __future__ import annotations

import torch


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every batch norm's scale, shift and statistics drawn at random (PyTorchVideo's own
    initialisation leaves them at 1, 0, 0, 1), and the classifier too; in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
            elif tensor.dim() == 1 and name.endswith("weight"):  # a norm's scale
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.dim() == 1 and tensor.is_floating_point():  # a norm's or fc's shift
                tensor.normal_(0, 0.1)
            elif tensor.dim() == 2:  # the classifier
                tensor.normal_(0, 0.01)
    return model.eval()
