"""Every family's size at its declared clip and 400 classes, pinned: parameters
exactly, multiply-adds (`count_macs`) to 0.5%. The README's model table shows these
numbers; a change to a network that moves them must say so here.

Where a paper or a zoo gives figures, the family's own test file compares them
(C3D, the 3D ResNets, I3D, SlowFast); these pins catch the drift of every other."""

from __future__ import annotations

import pytest
import torch

from vidray.models import available, build, entry
from vidray.models.flops import count_macs, count_params
from vidray.models.summary import example_input

# 23 full-size networks on the meta device take about 25 s: more than the fast
# part of the suite can spare.
pytestmark = pytest.mark.slow

PINNED = {  # name: (parameters, GMACs)
    "c3d": (79_634_576, 38.549),
    "cnn_lstm": (12_067_792, 29.030),
    "early_fusion": (11_466_384, 2.876),
    "i3d": (28_043_472, 28.408),
    "i3d_nl": (35_401_936, 36.535),
    "late_fusion_fc": (33_790_928, 18.158),
    "late_fusion_pool": (11_381_712, 18.136),
    "mc3_18": (11_695_440, 43.343),
    "mvit_v1_b": (36_610_672, 70.599),
    "mvit_v2_s": (34_537_744, 64.224),
    "r2plus1d_18": (31_505_325, 40.519),
    "r3d_18": (33_371_472, 40.697),
    "recurrent_conv": (30_117_456, 62.312),
    "s3d": (8_320_048, 17.979),
    "simple3d": (1_267_568, 0.369),
    "single_frame": (11_381_712, 1.814),
    "slow_fusion": (61_523_824, 4.146),
    "slowfast_r101": (62_826_968, 96.397),
    "slowfast_r50": (34_480_216, 27.639),
    "swin3d_b": (88_048_984, 140.667),
    "swin3d_s": (49_816_678, 82.841),
    "swin3d_t": (28_158_070, 43.882),
    "two_stream": (22_816_736, 4.296),
}


def test_every_family_is_pinned():
    assert sorted(PINNED) == available()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_family_size_at_its_declared_clip(name):
    params, gmacs = PINNED[name]
    with torch.device("meta"):
        model = build(name, num_classes=400)
        clip = example_input(entry(name).input, device="meta")
    assert count_params(model) == params
    assert count_macs(model, clip) / 1e9 == pytest.approx(gmacs, rel=0.005)


@pytest.mark.parametrize(
    ("name", "frames", "gmacs"),
    [
        # PyTorchVideo's zoo, fvcore in train mode: these convs and linears + batch norm.
        ("i3d", 8, 37.103),  # zoo 37.53
        ("slowfast_r101", 32, 125.906),  # zoo 127.20
    ],
)
def test_pytorchvideo_figures_are_these_counts_plus_batch_norm(name, frames, gmacs):
    with torch.device("meta"):
        model = build(name, num_classes=400)
        clip = torch.empty(1, 3, frames, 256, 256)
    assert count_macs(model, clip) / 1e9 == pytest.approx(gmacs, rel=0.005)
