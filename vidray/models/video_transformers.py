"""torchvision's Kinetics-400 video networks beyond the 3D ResNets: the multiscale vision
transformers (MViT), the video Swin transformers and S3D, registered as they are, so that
torchvision's weights (``model.pretrained=KINETICS400_V1``) or a state_dict saved from
torchvision's network load unchanged and give torchvision's logits.

    family     network (paper)                     params   GMACs   clip it reads
    mvit_v1_b  MViT-B 16×4 (Fan et al. 2021)       36.6 M    70.6   exactly 16 × 224²
    mvit_v2_s  MViTv2-S (Li et al. 2022)           34.5 M    64.2   exactly 16 × 224²
    swin3d_t   Video Swin-T (Liu et al. 2022)      28.2 M    43.9   any (declared 16 × 224²)
    swin3d_s   Video Swin-S                        49.8 M    82.8   any (declared 16 × 224²)
    swin3d_b   Video Swin-B                        88.0 M   140.7   any (declared 16 × 224²)
    s3d        S3D (Xie et al. 2018)                8.3 M    18.0   at least 13 × 209²

GMACs at the declared 16 × 224² clip and 400 classes: torchvision's "_ops" figures
exactly. The six differ only in data (`_Family`): torchvision's builder, its weights,
where its classifier sits and which clips it can take.

- MViT adds learnt positional embeddings (v1) or relative ones sized for the patch grid
  of a 16 × 224² clip (v2), so it reads that clip and no other; a different clip is one
  line from the check before the forward pass (`ClipCheck`), not a shape error inside it.
- S3D ends with a fixed 2×7×7 average pool over a map 8× smaller in time and 32× in
  space: shorter or smaller clips leave nothing to pool.
- Video Swin pads every clip to its 8×7×7 windows and takes any size; Liu et al. train
  and test on 32 frames (torchvision's accuracy too), torchvision's "_ops" count 16.

Each network normalises its input as its weights were trained (torchvision's
``transforms()``): MViT with 0.45 / 0.225 (PyTorchVideo's), Video Swin with ImageNet's,
S3D with torchvision's Kinetics statistics (0.43216, 0.394666, 0.37645) /
(0.22803, 0.22145, 0.216989).

``dropout`` sits before the classifier: torchvision's own head dropout in MViT (0.5) and
S3D (0.2); for Video Swin, whose torchvision network has none there, inside ``avgpool``
(state_dict keys unchanged) at the 0.5 of Liu et al.'s head. A state_dict for another
number of classes loads all but the classifier, which stays fresh: how Kinetics-400
weights are fine-tuned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.models import video as tv_video

from vidray.errors import VidrayError
from vidray.models.pretrained import read_pretrained
from vidray.models.registry import InputSpec, register
from vidray.models.weights import load_pretrained

# The clip torchvision's weights of all six were trained or evaluated on (16 frames,
# centre crops of 224 from frames scaled to 256) and its "_ops" are counted at.
_KINETICS_CLIP = InputSpec(frames=16, crop=224)


@dataclass(frozen=True)
class ClipSizes:
    """The clips a network can take: exactly ``frames`` × ``crop``², or at least that."""

    frames: int
    crop: int
    exact: bool
    reason: str  # why, for the error message

    def fits(self, T: int, H: int, W: int) -> bool:
        if self.exact:
            return (T, H, W) == (self.frames, self.crop, self.crop)
        return T >= self.frames and min(H, W) >= self.crop


@dataclass(frozen=True)
class ClipCheck:
    """A forward pre-hook: one line naming the clip a network needs, where its forward
    pass would fail with a shape error from deep inside (or, for MViT at T=15, run).
    A dataclass rather than a closure, so that the model still pickles."""

    family: str
    sizes: ClipSizes

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        T, H, W = args[0].shape[-3:]
        if not self.sizes.fits(T, H, W):
            op = "=" if self.sizes.exact else ">="
            raise VidrayError(
                f"model {self.family!r} needs clip.T{op}{self.sizes.frames} and "
                f"clip.crop{op}{self.sizes.crop} ({self.sizes.reason}), got T={T}, "
                f"crop {H}x{W}"
            )


@dataclass(frozen=True)
class _Family:
    paper: str
    network: Callable[..., nn.Module]  # torchvision's builder (weights=None, num_classes, ...)
    weights: type[WeightsEnum]
    head: str  # the classifier's module path in the state_dict
    dropout: float  # before the classifier, the paper's
    # Whether torchvision's builder takes ``dropout`` as the rate before its classifier;
    # Video Swin's means dropout throughout, so one is added before its head instead.
    dropout_is_head_argument: bool = True
    clip: ClipSizes | None = None  # None: any clip


_MVIT_CLIP = ClipSizes(16, 224, exact=True, reason="positional embeddings of that patch grid")
_SWIN = {"head": "head", "dropout": 0.5, "dropout_is_head_argument": False}
_FAMILIES = {
    "mvit_v1_b": _Family(
        paper="MViT-B (Fan et al. 2021)",
        network=tv_video.mvit_v1_b,
        weights=tv_video.MViT_V1_B_Weights,
        head="head.1",
        dropout=0.5,
        clip=_MVIT_CLIP,
    ),
    "mvit_v2_s": _Family(
        paper="MViTv2-S (Li et al. 2022)",
        network=tv_video.mvit_v2_s,
        weights=tv_video.MViT_V2_S_Weights,
        head="head.1",
        dropout=0.5,
        clip=_MVIT_CLIP,
    ),
    "swin3d_t": _Family(
        paper="Video Swin-T (Liu et al. 2022)",
        network=tv_video.swin3d_t,
        weights=tv_video.Swin3D_T_Weights,
        **_SWIN,
    ),
    "swin3d_s": _Family(
        paper="Video Swin-S (Liu et al. 2022)",
        network=tv_video.swin3d_s,
        weights=tv_video.Swin3D_S_Weights,
        **_SWIN,
    ),
    "swin3d_b": _Family(
        paper="Video Swin-B (Liu et al. 2022)",
        network=tv_video.swin3d_b,
        weights=tv_video.Swin3D_B_Weights,
        **_SWIN,
    ),
    "s3d": _Family(
        paper="S3D (Xie et al. 2018)",
        network=tv_video.s3d,
        weights=tv_video.S3D_Weights,
        head="classifier.1",
        dropout=0.2,
        clip=ClipSizes(13, 209, exact=False, reason="its last 2x7x7 average pool"),
    ),
}


def _build(name: str, num_classes: int, dropout: float | None, pretrained: str | None) -> nn.Module:
    family = _FAMILIES[name]
    rate = family.dropout if dropout is None else dropout
    if family.dropout_is_head_argument:
        model = family.network(weights=None, num_classes=num_classes, dropout=rate)
    else:
        model = family.network(weights=None, num_classes=num_classes)
        # In `avgpool`, just before the classifier, so that the state_dict keys stay.
        model.avgpool = nn.Sequential(model.avgpool, nn.Dropout(rate))
    if family.clip is not None:
        model.register_forward_pre_hook(ClipCheck(name, family.clip))
    if pretrained is not None:
        state = read_pretrained(pretrained, enum=family.weights).state
        head = (f"{family.head}.weight", f"{family.head}.bias")
        load_pretrained(model, state, source=pretrained, head=head)
    return model


def _builder(name: str) -> Callable[..., nn.Module]:
    family = _FAMILIES[name]

    def build(
        *, num_classes: int, dropout: float | None = None, pretrained: str | None = None
    ) -> nn.Module:
        return _build(name, num_classes, dropout, pretrained)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"torchvision's {family.paper}.\n\n"
        "Args:\n"
        "    num_classes: logits per clip (400 for Kinetics-400).\n"
        f"    dropout: before the classifier (default {family.dropout}).\n"
        "    pretrained: a state_dict file of torchvision's network, or its weights by name\n"
        f"        (``{family.weights.__name__}.KINETICS400_V1``, or just ``KINETICS400_V1``).\n"
    )
    return build


for _name, _family in _FAMILIES.items():
    register(_name, paper=_family.paper, input=_KINETICS_CLIP, weights=_family.weights)(
        _builder(_name)
    )
