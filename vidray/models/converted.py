"""State dicts of PyTorchVideo's and PySlowFast's networks under vidray's names.

PyTorchVideo builds its ResNets (I3D R50) and SlowFast networks from the same
pieces as `vidray.models.trunk3d`, named by position:

    PyTorchVideo                                        vidray
    blocks.0.conv / .norm                               stem.conv / .bn
    blocks.0.multipathway_blocks.{p}.conv / .norm       {slow,fast}.stem.conv / .bn
    blocks.{s}.multipathway_fusion.conv_fast_to_slow    lateral.{s}.conv   (.norm: .bn)
    blocks.{s}[.multipathway_blocks.{p}].res_blocks.{i}
        .branch1_conv / .branch1_norm                   [path.]layer{k}.{i}.downsample.0 / .1
        .branch2.conv_{a,b,c} / .norm_{a,b,c}           [path.]layer{k}.{i}.conv{1,2,3} / .bn{1,2,3}
    blocks.{last}.proj                                  head.fc

where ``layer{k}`` is the k-th block that holds residual stages (a pooling block
between them, as I3D's after res2, holds none) and path ``p`` is 0 = slow,
1 = fast. A detection network's state dict (``slowfast_r50_detection``) has its
backbone under ``model.`` and its box classifier ``detection_head.proj``, renamed
``head.fc`` as a classifier's (the detector's ``fc`` takes it). The rename is all
there is to it: the networks are the same layer for layer
(``tests/models/test_pretrained.py`` compares logits with PyTorchVideo's own networks).

PySlowFast (whose checkpoints hold ``{"model_state": ..., "cfg": ...}``) names
stages ``s1`` (the stem) to ``s5`` and pathways ``pathway0`` (slow) and ``pathway1``:

    PySlowFast                                          vidray
    s1.pathway{p}_stem.conv / .bn                       [path.]stem.conv / .bn
    s{n}_fuse.conv_f2s / .bn                            lateral.{n-1}.conv / .bn
    s{n}.pathway{p}_res{i}.branch1 / .branch1_bn        [path.]layer{n-1}.{i}.downsample.0 / .1
    s{n}.pathway{p}_res{i}.branch2.{a,b,c}[_bn]         [path.]layer{n-1}.{i}.conv{k} / .bn{k}
    s{n}.pathway0_nonlocal{i}.conv_{theta,phi,g,out}    layer{n-1}.nl{i}.{theta,phi,g,out}
    s{n}.pathway0_nonlocal{i}.bn                        layer{n-1}.nl{i}.bn
    head.projection                                     head.fc

where ``path.`` is empty for a one-pathway network (I3D).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from vidray.errors import VidrayError

_PATHWAYS = ("slow", "fast")
_BRANCH = {
    "branch1_conv": "downsample.0",
    "branch1_norm": "downsample.1",
    "branch2.conv_a": "conv1",
    "branch2.norm_a": "bn1",
    "branch2.conv_b": "conv2",
    "branch2.norm_b": "bn2",
    "branch2.conv_c": "conv3",
    "branch2.norm_c": "bn3",
}
_RES_BLOCK = re.compile(
    r"blocks\.(?P<stage>\d+)\.(multipathway_blocks\.(?P<path>\d+)\.)?res_blocks\.(?P<block>\d+)\."
    r"(?P<part>branch1_conv|branch1_norm|branch2\.(conv|norm)_[abc])\.(?P<param>\w+)$"
)
_STEM = re.compile(
    r"blocks\.0\.(multipathway_blocks\.(?P<path>\d+)\.)?(?P<part>conv|norm)\.(?P<param>\w+)$"
)
_LATERAL = re.compile(
    r"blocks\.(?P<stage>\d+)\.multipathway_fusion\.(?P<part>conv_fast_to_slow|norm)\.(?P<param>\w+)$"
)
_HEAD = re.compile(r"(blocks\.\d+|detection_head)\.proj\.(?P<param>\w+)$")


_PYSLOWFAST = re.compile(
    r"s(?P<stage>[1-5])(?P<fuse>_fuse)?\.(pathway(?P<path>\d)_(?P<unit>stem|res|nonlocal)(?P<index>\d*)\.)?"
    r"(?P<part>[\w.]+)\.(?P<param>\w+)$"
)
_PYSLOWFAST_PART = {
    "branch1": "downsample.0",
    "branch1_bn": "downsample.1",
    "branch2.a": "conv1",
    "branch2.a_bn": "bn1",
    "branch2.b": "conv2",
    "branch2.b_bn": "bn2",
    "branch2.c": "conv3",
    "branch2.c_bn": "bn3",
    "conv_theta": "theta",
    "conv_phi": "phi",
    "conv_g": "g",
    "conv_out": "out",
    "conv_f2s": "conv",
    "conv": "conv",
    "bn": "bn",
}


def from_pyslowfast(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A PySlowFast ``model_state`` under vidray's names (module docstring); a key of
    no known kind is a one-line error naming it."""
    keys = [key.removeprefix("module.") for key in state]
    two_pathways = any(".pathway1_" in key for key in keys)
    return {
        _rename_pyslowfast(key, two_pathways): value
        for key, value in zip(keys, state.values(), strict=True)
    }


def _rename_pyslowfast(key: str, two_pathways: bool) -> str:
    if m := _HEAD_PYSLOWFAST.match(key):
        return f"head.fc.{m['param']}"
    m = _PYSLOWFAST.match(key)
    part = _PYSLOWFAST_PART.get(m["part"]) if m else None
    if m is None or part is None:
        raise VidrayError(f"PySlowFast weight {key!r} has no place in vidray's networks")
    stage, param = int(m["stage"]), m["param"]
    if m["fuse"]:
        return f"lateral.{stage - 1}.{part}.{param}"
    path = f"{_PATHWAYS[int(m['path'])]}." if two_pathways else ""
    if m["unit"] == "stem":
        return f"{path}stem.{part}.{param}"
    block = "nl" if m["unit"] == "nonlocal" else ""
    return f"{path}layer{stage - 1}.{block}{m['index']}.{part}.{param}"


_HEAD_PYSLOWFAST = re.compile(r"head\.projection\.(?P<param>\w+)$")


def is_pytorchvideo(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` has PyTorchVideo's layout: its stem is ``blocks.0.conv`` or
    ``blocks.0.multipathway_blocks`` (torchvision's MViT also has a ``blocks.0``)."""
    stems = ("blocks.0.conv.", "blocks.0.multipathway_blocks.")
    return any(_strip(key).startswith(stems) for key in state)


def from_pytorchvideo(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` under vidray's names (module docstring); a key of no known kind is a
    one-line error naming it."""
    keys = [_strip(key) for key in state]
    stages = sorted({int(m["stage"]) for k in keys if (m := _RES_BLOCK.match(k))})
    layer = {stage: i + 1 for i, stage in enumerate(stages)}
    renamed = {}
    for key, value in zip(keys, state.values(), strict=True):
        renamed[_rename(key, layer)] = value
    return renamed


def _strip(key: str) -> str:
    return key.removeprefix("model.")


def _path(match: re.Match) -> str:
    return "" if match["path"] is None else f"{_PATHWAYS[int(match['path'])]}."


def _rename(key: str, layer: dict[int, int]) -> str:
    if m := _RES_BLOCK.match(key):
        name = f"layer{layer[int(m['stage'])]}.{m['block']}.{_BRANCH[m['part']]}"
        return f"{_path(m)}{name}.{m['param']}"
    if m := _STEM.match(key):
        return f"{_path(m)}stem.{'conv' if m['part'] == 'conv' else 'bn'}.{m['param']}"
    if m := _LATERAL.match(key):
        part = "conv" if m["part"] == "conv_fast_to_slow" else "bn"
        return f"lateral.{m['stage']}.{part}.{m['param']}"
    if m := _HEAD.match(key):
        return f"head.fc.{m['param']}"
    raise VidrayError(f"PyTorchVideo weight {key!r} has no place in vidray's networks")
