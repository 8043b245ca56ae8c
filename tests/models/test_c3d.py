import pytest
import torch

from vidray.errors import VidrayError
from vidray.models import build, entry
from vidray.models.flops import count_macs, count_params


def _paper_c3d() -> tuple[torch.nn.Module, torch.Tensor]:
    """The full-size network and its 16×112×112 input on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return build("c3d", num_classes=487), torch.empty(1, 3, 16, 112, 112)


@pytest.mark.parametrize(("frames", "crop"), [(16, 32), (8, 40)])
def test_small_c3d_returns_logits_and_backpropagates(frames, crop):
    model = build("c3d", num_classes=5, width=8)
    logits = model(torch.randn(2, 3, frames, crop, crop))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.features.conv1a.weight.grad.abs().sum() > 0


def test_c3d_has_the_papers_parameter_count():
    model, _ = _paper_c3d()
    assert count_params(model) == 79_991_015


def test_c3d_pool5_gives_the_papers_8192_features():
    model, clip = _paper_c3d()
    assert model.features(clip).shape == (1, 512, 1, 4, 4)
    assert model.classifier.fc6.in_features == 8192


def test_c3d_multiply_adds_are_within_5_percent_of_the_lectures_39_5_g():
    model, clip = _paper_c3d()
    macs = count_macs(model, clip)
    assert macs == 38_548_959_232  # convs and FCs counted layer by layer
    assert abs(macs / 39.5e9 - 1) < 0.05


def test_c3d_declares_the_papers_clip():
    spec = entry("c3d").input
    assert (spec.frames, spec.crop, spec.flow) == (16, 112, 0)


def test_c3d_rejects_an_unknown_argument():
    with pytest.raises(
        VidrayError, match=r"'c3d' takes no argument depth; valid: width, dropout, pretrained"
    ):
        build("c3d", num_classes=3, depth=8)


def test_c3d_pools_as_caffe_does_at_pool5():
    """7×7 -> 4×4 with windows starting at 0, 2, 4, 6 (Caffe rounds up), not at -1, 1,
    3, 5 (a one-pixel pad gives the same size from other windows)."""
    pool5 = build("c3d", num_classes=3, width=8).features.pool5
    grid = torch.arange(49.0).reshape(1, 1, 1, 7, 7).expand(1, 1, 2, 7, 7)
    out = pool5(grid)[0, 0, 0]
    rows = [[grid[0, 0, 0, r : r + 2, c : c + 2].max() for c in (0, 2, 4, 6)] for r in (0, 2, 4, 6)]
    assert out.tolist() == torch.tensor(rows).tolist()


def _as_port(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This module's keys as the PyTorch port of the Sports-1M weights names them."""
    port = {}
    for key, value in state.items():
        _, layer, param = key.split(".")  # features.conv1a.weight, classifier.fc6.bias
        port[f"{layer[:-1] if layer in ('conv1a', 'conv2a') else layer}.{param}"] = value
    return port


def test_c3d_loads_the_ports_weights_and_computes_what_they_computed(tmp_path):
    torch.manual_seed(0)
    source = build("c3d", num_classes=487, width=8).eval()
    port = _as_port(source.state_dict())
    assert {"conv1.weight", "conv3a.weight", "conv5b.bias", "fc8.weight"} <= set(port)
    path = tmp_path / "c3d_sports1m.pt"
    torch.save(port, path)
    loaded = build("c3d", num_classes=487, width=8, pretrained=str(path)).eval()
    clip = torch.randn(2, 3, 16, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), source(clip), rtol=0, atol=1e-5)
    # Fine-tuning to other classes: all but fc8 from the file, fc8 fresh.
    tuned = build("c3d", num_classes=5, width=8, pretrained=str(path))
    assert torch.equal(tuned.features.conv5b.weight, source.features.conv5b.weight)
    assert tuned.classifier.fc8.out_features == 5
    # Weights of another width are one line naming the tensor.
    with pytest.raises(VidrayError, match=r"features\.conv1a\.weight is \(8, 3, 3, 3, 3\) there"):
        build("c3d", num_classes=487, width=16, pretrained=str(path))
