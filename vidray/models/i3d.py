"""I3D: a 2D ImageNet ResNet inflated to 3D (Carreira & Zisserman, CVPR 2017).

In the ResNet-50 form of Wang et al. 2018 / PyTorchVideo's I3D R50 8×8 (400 classes:
28.04 M parameters; 37.1 GMACs at 8×256², PyTorchVideo's 256² test crop, against
its 37.53; 28.4 GMACs at 8×224²):

    clip (B, 3, 8, 224, 224)
      └─ stem    conv 5×7×7 /(1,2,2) → BN → ReLU → max pool 1×3×3 /(1,2,2)   64 × 8×56²
      └─ res2    3 bottlenecks, k_t = 3 3 3                                  256 × 8×56²
      └─ res3    max pool 2×1×1 (T/2) → 4 bottlenecks, k_t = 3 1 3 1         512 × 4×28²
      └─ res4    6 bottlenecks, k_t = 3 1 3 1 3 1                           1024 × 4×14²
      └─ res5    3 bottlenecks, k_t = 1 3 1                                 2048 × 4×7²
      └─ head    global average pool → dropout 0.5 → fc                    num_classes

k_t is the temporal size of a block's first (1×1 → k_t×1×1) conv; every other conv
keeps its 2D shape with a time extent of 1. `i3d_nl` adds five non-local blocks
(Wang et al. 2018): after blocks 1, 3 of res3 and 1, 3, 5 of res4.

Inflation (`inflate_2d_to_3d`, `load_inflated`): a 2D kernel W (k×k) becomes
W/K_t repeated K_t times along time, BN statistics and affine parameters are copied,
pooling gets a time extent of 1, the classifier is kept. On a "boring" video (one
frame repeated) every inflated conv then computes exactly its 2D counterpart at
every frame, because time is padded by repeating edge frames (`time_padding=
"replicate"`, the default here). Zero padding would scale the edge frames' response
by the share of the kernel inside the clip (2/3 for k_t = 3) and the error would
spread inwards layer by layer. A constant clip stays constant through every layer
(the temporal max pool included), so the logits equal the 2D logits. PyTorchVideo
pads with zeros; the choice changes no parameter count or MAC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torchvision
from torch import Tensor, nn

from vidray.errors import VidrayError
from vidray.models.nonlocal_block import NonLocalBlock, NonLocalMode
from vidray.models.pretrained import FOREIGN, Pretrained, read_pretrained
from vidray.models.registry import InputSpec, register
from vidray.models.trunk3d import STAGE_BLOCKS, PathwaySpec, ResNet3d, TimePadding
from vidray.models.weights import TRUNK_HEAD, load_pretrained

PAPER = "I3D, Carreira & Zisserman 2017 (ResNet form: Wang et al. 2018)"
NONLOCAL_PAPER = "Non-local neural networks, Wang et al. 2018"


@dataclass(frozen=True)
class TimeKernels:
    """Temporal kernel sizes of an inflated ResNet.

    `stages` holds one pattern per stage (res2..res5), repeated over its blocks:
    (3, 1) means blocks 0, 2, 4, ... get k_t = 3 and the others stay 2D-like.
    The defaults are I3D R50's.
    """

    stem: int = 5
    stages: tuple[tuple[int, ...], ...] = ((3,), (3, 1), (3, 1), (1, 3))


def i3d_spec(
    depth: int = 50,
    *,
    width: int = 64,
    time_kernels: TimeKernels = TimeKernels(),
    temporal_pool: int = 2,
    res5_stride: int = 2,
    res5_dilation: int = 1,
    time_padding: TimePadding = "replicate",
) -> PathwaySpec:
    """The I3D trunk of a ResNet-`depth`; `temporal_pool` halves T before res3."""
    spec = PathwaySpec.resnet(
        depth,
        width=width,
        stem_kernel=time_kernels.stem,
        temporal_kernels=time_kernels.stages,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
        time_padding=time_padding,
    )
    return spec.with_stage(1, temporal_pool=temporal_pool)


def _torchvision_to_trunk(key: str) -> str:
    """torchvision ResNet names → trunk names: only the stem and the classifier differ."""
    for old, new in (("conv1.", "stem.conv."), ("bn1.", "stem.bn."), ("fc.", "head.fc.")):
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def load_inflated(model3d: ResNet3d, state_2d: Mapping[str, Tensor], *, source: str) -> None:
    """Load a torchvision 2D ResNet state_dict into `model3d`, inflating conv kernels.

    Each (O, I, k, k) kernel becomes (O, I, K_t, k, k) = the kernel / K_t at every
    time step, K_t being the 3D conv's temporal size. BN buffers and parameters are
    copied as they are. The classifier is copied when its class count matches and
    otherwise left as initialised (fine-tuning to a new label set). Non-local blocks,
    which have no 2D counterpart, keep their identity initialisation. A state_dict
    of another architecture is a `VidrayError` naming `source` and the first misfit.
    """
    target = model3d.state_dict()
    loaded: dict[str, Tensor] = {}
    for key_2d, value in state_2d.items():
        key = _torchvision_to_trunk(key_2d)
        if key not in target:
            raise VidrayError(f"{source}: weight {key_2d!r} has no place in the 3D ResNet")
        want = target[key]
        if key.startswith("head.fc.") and value.shape != want.shape:
            continue
        if value.dim() == 4 and want.dim() == 5:
            k_t = want.shape[2]
            value = value.unsqueeze(2).repeat(1, 1, k_t, 1, 1) / k_t
        if value.shape != want.shape:
            raise VidrayError(
                f"{source}: weight {key_2d!r} has shape {tuple(value.shape)}, "
                f"the 3D ResNet needs {tuple(want.shape)} (another depth or width?)"
            )
        loaded[key] = value
    nonlocal_prefixes = tuple(
        f"{name}." for name, m in model3d.named_modules() if isinstance(m, NonLocalBlock)
    )
    missing = [
        k for k in target if k not in loaded and not k.startswith((*nonlocal_prefixes, "head.fc."))
    ]
    if missing:
        raise VidrayError(f"{source}: no 2D weight for {missing[0]!r} (another depth?)")
    model3d.load_state_dict(loaded, strict=False)


def inflate_2d_to_3d(
    model2d: nn.Module,
    *,
    time_kernels: TimeKernels = TimeKernels(),
    temporal_pool: int = 2,
    time_padding: TimePadding = "replicate",
    dropout: float = 0.5,
) -> ResNet3d:
    """The 3D I3D network of a torchvision ResNet (18/34/50/101/152), its weights inflated.

    The result takes (B, C, T, H, W) and has the 2D network's classes; with the
    default replicate time padding it reproduces the 2D logits on a constant video.
    """
    resnet = torchvision.models.ResNet
    if not isinstance(model2d, resnet) or (model2d.groups, model2d.base_width) != (1, 64):
        raise TypeError(f"inflate_2d_to_3d takes a torchvision ResNet, got {type(model2d)}")
    blocks = tuple(len(getattr(model2d, f"layer{i}")) for i in range(1, 5))
    bottleneck = isinstance(model2d.layer1[0], torchvision.models.resnet.Bottleneck)
    depths = [d for d, b in STAGE_BLOCKS.items() if b == blocks and (d >= 50) == bottleneck]
    if not depths:
        raise TypeError(f"not a standard ResNet depth: blocks per stage {blocks}")
    conv1 = model2d.conv1
    spec = i3d_spec(
        depths[0],
        width=conv1.out_channels,
        time_kernels=time_kernels,
        temporal_pool=temporal_pool,
        time_padding=time_padding,
    )
    model3d = ResNet3d(
        spec,
        num_classes=model2d.fc.out_features,
        dropout=dropout,
        in_channels=conv1.in_channels,
    )
    load_inflated(model3d, model2d.state_dict(), source=type(model2d).__name__)
    return model3d


def i3d_settings(weights: Pretrained) -> dict[str, object]:
    """The time padding ``weights`` were trained with: zeros for PyTorchVideo's and
    PySlowFast's networks, a vidray checkpoint's own (replicate, the default, where
    it records none). 2D weights say nothing: their exact inflation needs replicate."""
    if weights.layout in FOREIGN:
        return {"time_padding": "zeros"}
    if weights.layout == "checkpoint":
        return {"time_padding": weights.recorded.get("time_padding") or "replicate"}
    return {}


def _i3d(
    *,
    num_classes: int,
    depth: int,
    width: int,
    dropout: float,
    pretrained: str | None,
    res5_stride: int,
    res5_dilation: int,
    time_padding: TimePadding | None,
    nonlocal_mode: NonLocalMode | None = None,
) -> ResNet3d:
    """The I3D network (with non-local blocks where ``nonlocal_mode`` is given), its
    time padding as given, else the weights', else replicate; 2D weights inflated
    into it, 3D ones loaded."""
    weights = read_pretrained(pretrained) if pretrained else None
    implied = i3d_settings(weights) if weights else {}
    spec = i3d_spec(
        depth,
        width=width,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
        time_padding=time_padding or implied.get("time_padding") or "replicate",
    )
    if nonlocal_mode is not None:
        spec = _with_nonlocal_blocks(spec, depth=depth, mode=nonlocal_mode)
    model = ResNet3d(spec, num_classes=num_classes, dropout=dropout)
    if weights is None:
        return model
    if "conv1.weight" in weights.state:  # a torchvision 2D ResNet's stem
        load_inflated(model, weights.state, source=weights.source)
    else:
        load_pretrained(model, weights.state, source=weights.source, head=TRUNK_HEAD)
    return model


def _with_nonlocal_blocks(spec: PathwaySpec, *, depth: int, mode: NonLocalMode) -> PathwaySpec:
    """The paper's 5 blocks: 2 in res3, 3 in res4 (`nonlocal_positions`)."""
    spec = replace(spec, nonlocal_mode=mode)
    for stage, count in ((1, 2), (2, 3)):
        every = 7 if stage == 2 and depth == 101 else 2
        positions = nonlocal_positions(spec.stages[stage].blocks, count, every=every)
        spec = spec.with_stage(stage, nonlocal_after=positions)
    return spec


@register("i3d", paper=PAPER, input=InputSpec(frames=8, crop=224), settings_from=i3d_settings)
def i3d(
    *,
    num_classes: int,
    depth: int = 50,
    width: int = 64,
    dropout: float = 0.5,
    pretrained: str | None = None,
    res5_stride: int = 2,
    res5_dilation: int = 1,
    time_padding: TimePadding | None = None,
) -> ResNet3d:
    """I3D ResNet-`depth` (module docstring), from scratch, from 2D ImageNet weights
    inflated into it, or from a 3D I3D checkpoint.

    `depth`: 18/34 (basic blocks), 50/101/152 (bottlenecks). `width`: stem channels (64
    in the paper; every stage scales with it). `pretrained`: a torchvision ResNet-`depth`
    state_dict file or weights name such as "ResNet50_Weights.IMAGENET1K_V1" (inflated),
    or 3D weights (`vidray.models.pretrained`: PyTorchVideo's i3d_r50, PySlowFast's
    I3D, a vidray checkpoint); the classifier is kept only if it has `num_classes`
    outputs. `res5_stride=1` keeps res5 at 1/16 resolution for a detector (with
    `res5_dilation=2`, as SlowFast's AVA detector). `time_padding`: "replicate" (exact
    inflation, see the module docstring) or "zeros" (PyTorchVideo's and PySlowFast's);
    unset, it is what the weights were trained with (`i3d_settings`), else replicate.
    """
    return _i3d(
        num_classes=num_classes,
        depth=depth,
        width=width,
        dropout=dropout,
        pretrained=pretrained,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
        time_padding=time_padding,
    )


def nonlocal_positions(blocks: int, count: int, *, every: int = 2) -> tuple[int, ...]:
    """The authors' rule: after block i where ``i % every == every - 1``, at most `count`
    of a stage's `blocks`: (1, 3, 5) every other block, (6, 13, 20) every 7th."""
    return tuple(range(every - 1, blocks, every))[:count]


@register(
    "i3d_nl",
    paper=NONLOCAL_PAPER,
    input=InputSpec(frames=8, crop=224),
    settings_from=i3d_settings,
)
def i3d_nl(
    *,
    num_classes: int,
    depth: int = 50,
    width: int = 64,
    dropout: float = 0.5,
    pretrained: str | None = None,
    res5_stride: int = 2,
    res5_dilation: int = 1,
    time_padding: TimePadding | None = None,
    nonlocal_mode: NonLocalMode = "embedded_gaussian",
) -> ResNet3d:
    """I3D with the paper's 5 non-local blocks: after blocks 1, 3 of res3 and 1, 3, 5 of res4;
    at depth 101, whose res4 has 23 blocks, after its blocks 6, 13 and 20 (every 7th,
    as in the authors' code).

    At depth 18/34 the stages are shorter and the same rule gives fewer blocks.
    Arguments as in `i3d` (2D weights leave the non-local blocks at their identity
    start; 3D ones must hold them); `nonlocal_mode` is "embedded_gaussian" (the
    paper's default) or "dot_product".
    """
    return _i3d(
        num_classes=num_classes,
        depth=depth,
        width=width,
        dropout=dropout,
        pretrained=pretrained,
        res5_stride=res5_stride,
        res5_dilation=res5_dilation,
        time_padding=time_padding,
        nonlocal_mode=nonlocal_mode,
    )
