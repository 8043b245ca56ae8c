"""CNN+LSTM and the recurrent convolutional network (ConvGRU over trunk maps)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import vidray.models.recurrent  # noqa: F401  (registers the family)
from vidray.errors import VidrayError
from vidray.models import build
from vidray.models.recurrent import ConvGRU

SMALL = {"width": 8, "depth": 18}
FAMILIES = [("cnn_lstm", {"hidden": 16}), ("recurrent_conv", {})]


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES)
def test_small_model_gives_logits_and_trains_every_parameter(name, kwargs):
    model = build(name, num_classes=5, **SMALL, **kwargs)
    logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5)
    F.cross_entropy(logits, torch.tensor([1, 4])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES)
def test_last_step_depends_on_the_first_frame(name, kwargs):
    torch.manual_seed(0)
    model = build(name, num_classes=3, **SMALL, **kwargs).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    perturbed = clip.clone()
    perturbed[:, :, 0] += torch.randn_like(perturbed[:, :, 0])
    with torch.no_grad():
        assert not torch.allclose(model(clip), model(perturbed), atol=1e-6)


def test_recurrent_conv_runs_a_conv_gru_per_tapped_stage():
    model = build("recurrent_conv", num_classes=3, taps=[4, 2], **SMALL)
    assert model.taps == (2, 4)
    assert [gru.hidden_channels for gru in model.grus] == [16, 64]
    assert model.fc.in_features == 16 + 64
    assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 3)


def test_recurrent_conv_states_of_a_bottleneck_trunk_have_the_stage_base_channels():
    model = build("recurrent_conv", num_classes=3, width=8, depth=50)
    assert [gru.gates.in_channels for gru in model.grus] == [64 + 16, 128 + 32, 256 + 64]
    assert [gru.hidden_channels for gru in model.grus] == [16, 32, 64]


def test_recurrent_conv_rejects_stages_the_trunk_lacks():
    with pytest.raises(VidrayError, match=r"taps must be distinct ResNet stages .* got \[2, 5\]"):
        build("recurrent_conv", num_classes=3, taps=[2, 5], **SMALL)


def test_cnn_lstm_stacks_layers():
    model = build("cnn_lstm", num_classes=3, hidden=16, layers=2, dropout=0.1, **SMALL)
    assert model.lstm.num_layers == 2 and model.lstm.dropout == 0.1
    assert model(torch.randn(1, 3, 3, 32, 32)).shape == (1, 3)


def test_conv_gru_keeps_the_map_size_and_returns_a_bounded_state():
    gru = ConvGRU(4, 6)
    state = gru(torch.randn(2, 5, 4, 7, 9) * 10)
    assert state.shape == (2, 6, 7, 9)
    # h_t is a convex mix of h_{t-1} and a tanh: it stays in [-1, 1] from a zero start
    assert state.abs().max() <= 1


def test_conv_gru_state_carries_the_first_input_to_the_last_step():
    torch.manual_seed(0)
    gru = ConvGRU(3, 4)
    seq = torch.randn(1, 6, 3, 8, 8, requires_grad=True)
    gru(seq).sum().backward()
    assert seq.grad[:, 0].abs().sum() > 0


def test_conv_gru_with_a_shut_update_gate_holds_its_state():
    # z -> 0 makes h_t = h_{t-1}: what the gate lets through is what the cell remembers
    gru = ConvGRU(3, 4)
    with torch.no_grad():
        gru.gates.bias[:4] = -1e4  # the first half of the gate channels is z
    h = torch.rand(2, 4, 5, 5)
    torch.testing.assert_close(gru.step(torch.randn(2, 3, 5, 5), h), h)
