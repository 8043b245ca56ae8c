"""Non-local blocks: identity at initialisation, insertable into any 3D ResNet stage."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vidray.models import build
from vidray.models.nonlocal_block import MODES, NonLocalBlock, insert_nonlocal


@pytest.mark.parametrize("mode", MODES)
def test_nonlocal_block_is_the_identity_at_init(mode):
    block = NonLocalBlock(16, mode=mode)
    x = torch.randn(2, 16, 3, 6, 6)
    assert torch.equal(block(x), x)
    assert torch.equal(block.eval()(x), x)


@pytest.mark.parametrize("mode", MODES)
def test_inserting_nonlocal_blocks_leaves_the_network_output_unchanged_at_init(mode):
    plain = build("i3d", num_classes=4, width=8).eval()
    with_nl = build("i3d_nl", num_classes=4, width=8, nonlocal_mode=mode).eval()
    missing, unexpected = with_nl.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".nl" in key for key in missing)
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(with_nl(clip), plain(clip), atol=1e-6, rtol=0)


def test_i3d_nl_has_the_papers_five_blocks_in_res3_and_res4():
    with torch.device("meta"):
        model = build("i3d_nl", num_classes=400)
    names = [n for n, m in model.named_modules() if isinstance(m, NonLocalBlock)]
    assert names == ["layer2.nl1", "layer2.nl3", "layer3.nl1", "layer3.nl3", "layer3.nl5"]


def test_i3d_nl_r101_has_its_res4_blocks_every_seventh_block():
    with torch.device("meta"):
        model = build("i3d_nl", num_classes=400, depth=101)
    names = [n for n, m in model.named_modules() if isinstance(m, NonLocalBlock)]
    assert names == ["layer2.nl1", "layer2.nl3", "layer3.nl6", "layer3.nl13", "layer3.nl20"]


def test_nonlocal_block_starts_learning_through_its_output_scale():
    block = NonLocalBlock(8)
    block(torch.randn(2, 8, 2, 4, 4)).square().sum().backward()
    assert block.bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("mode", "expected"), [("embedded_gaussian", "mean"), ("dot_product", 0)])
def test_a_query_that_sees_nothing_attends_by_the_mode(mode, expected):
    # theta = 0 makes every affinity 0: softmax spreads attention evenly, so each
    # position gets the mean of g; dot product scales the zeros, so y = 0.
    block = NonLocalBlock(4, mode=mode, inner_channels=4, subsample=False)
    with torch.no_grad():
        block.theta.weight.zero_(), block.theta.bias.zero_()
        block.out.weight.copy_(torch.eye(4).view(4, 4, 1, 1, 1)), block.out.bias.zero_()
    block.bn = nn.Identity()  # y itself comes out: z = x + y
    x = torch.randn(1, 4, 2, 3, 3)
    y = block(x) - x
    g = block.g(x)
    want = g.mean(dim=(2, 3, 4), keepdim=True).expand_as(g) if expected == "mean" else 0 * g
    assert torch.allclose(y, want, atol=1e-6)


def test_nonlocal_inserts_into_a_torchvision_video_resnet_stage():
    model = torchvision.models.video.r3d_18(num_classes=4).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        before = model(clip)
        state = model.state_dict()
        model.layer3 = insert_nonlocal(model.layer3, [0, 1], channels=256, mode="dot_product")
        missing, _ = model.load_state_dict(state, strict=False)
        after = model.eval()(clip)
    assert sorted({k.split(".")[1] for k in missing}) == ["nl0", "nl1"]
    assert torch.allclose(after, before, atol=1e-6, rtol=0)


def test_nonlocal_after_a_block_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match=r"no residual block \['5'\]"):
        insert_nonlocal(nn.Sequential(nn.Identity()), [5], channels=8)


@pytest.mark.parametrize(
    ("mode", "instantiation"), [("embedded_gaussian", "softmax"), ("dot_product", "dot_product")]
)
@pytest.mark.parametrize("subsample", [True, False])
def test_nonlocal_block_computes_what_pytorchvideos_does(mode, instantiation, subsample):
    """The authors' block as PyTorchVideo 0.1.5 builds it (PySlowFast's is the same),
    with random weights and BN statistics copied in by name."""
    reference_module = pytest.importorskip("pytorchvideo.layers.nonlocal_net")
    torch.manual_seed(0)
    reference = reference_module.create_nonlocal(
        dim_in=16,
        dim_inner=8,
        pool_size=(1, 2, 2) if subsample else None,
        instantiation=instantiation,
    )
    with torch.no_grad():
        for tensor in [*reference.parameters(), reference.norm.running_mean]:
            tensor.copy_(torch.randn_like(tensor))
        reference.norm.running_var.copy_(torch.rand_like(reference.norm.running_var) + 0.5)
    ours = NonLocalBlock(16, mode=mode, subsample=subsample)
    names = {
        "conv_theta": "theta",
        "conv_phi": "phi",
        "conv_g": "g",
        "conv_out": "out",
        "norm": "bn",
    }
    state = {}
    for key, value in reference.state_dict().items():
        module, _, param = key.partition(".")
        state[f"{names[module]}.{param}"] = value
    ours.load_state_dict(state)
    x = torch.randn(2, 16, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=1e-5)
