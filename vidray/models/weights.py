"""The one initialisation of every network trained from scratch, and loading a
pretrained network's weights with a fresh classifier for other classes (files
and names are read by `vidray.state_dicts`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from vidray.errors import VidrayError

# The std of a classifier's weights in the 3D networks (PySlowFast's heads, C3D's
# VGG-style classifier); torchvision's 2D ResNets keep PyTorch's default there.
HEAD_STD = 0.01
# The classifier of the 3D trunks' `Head` (I3D, SlowFast) in their state dicts.
TRUNK_HEAD = ("head.fc.weight", "head.fc.bias")


def init_weights(module: nn.Module, *, linear_std: float | None = None) -> None:
    """The weight initialisation of every network here (He et al. 2015, as torchvision).

    Convolutions, 2D and 3D: He-normal over fan-out, bias zero. Norm layers reset
    themselves: the identity, except one made to start at zero (a non-local block's
    last), which stays zero. Linear layers: N(0, ``linear_std``) with zero bias where
    it is given, else PyTorch's default.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, std=linear_std)
            nn.init.zeros_(m.bias)


def load_pretrained(
    model: nn.Module, state: Mapping[str, Tensor], *, source: str, head: Sequence[str]
) -> None:
    """Load ``state`` into ``model``. The classifier (the ``head`` keys) stays fresh
    where its size differs: fine-tuning to other classes. Any other tensor of another
    shape, missing or left over is a one-line error naming the first."""
    own = model.state_dict()
    if any(k in state and state[k].shape != own[k].shape for k in head):
        state = {k: v for k, v in state.items() if k not in head}
    for key, value in state.items():
        if key in own and value.shape != own[key].shape:
            raise VidrayError(
                f"pretrained {source!r} does not fit this model: {key} is {tuple(value.shape)} "
                f"there, {tuple(own[key].shape)} here; build it with the arguments they had "
                "(width, depth, ...)"
            )
    result = model.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - set(head))
    if missing or result.unexpected_keys:
        found = [f"{len(missing)} tensors missing (first {missing[0]})"] if missing else []
        if result.unexpected_keys:
            first = sorted(result.unexpected_keys)[0]
            found.append(f"{len(result.unexpected_keys)} with no place (first {first})")
        raise VidrayError(
            f"pretrained {source!r} does not fit this model: {', '.join(found)}; "
            "is it another family's or depth's?"
        )
