"""The LR schedule and the training knobs' config, without Ray."""

from __future__ import annotations

import math

import pytest
import torch

from vidray.config import OptimConfig, load_config
from vidray.errors import VidrayError
from vidray.train.loop import with_last
from vidray.train.schedule import Scheduler, lr_factor


def test_warmup_ramps_linearly_to_the_peak():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=2.0)
    assert lr_factor(cfg, 0.0, 10) == 0.0
    assert lr_factor(cfg, 0.5, 10) == pytest.approx(0.25)
    assert lr_factor(cfg, 1.0, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 2.0, 10) == pytest.approx(1.0)


def test_cosine_falls_from_peak_to_zero_after_warmup():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=1.0)
    assert lr_factor(cfg, 1.0, 5) == pytest.approx(1.0)
    assert lr_factor(cfg, 3.0, 5) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(cfg, 5.0, 5) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, 7.0, 5) == pytest.approx(0.0, abs=1e-12)  # stays at the end value


def test_step_decays_by_gamma_every_step_epochs_after_warmup():
    cfg = OptimConfig(schedule="step", warmup_epochs=1.0, step_epochs=2, gamma=0.1)
    factors = [lr_factor(cfg, p, 10) for p in (1.0, 2.9, 3.0, 4.9, 5.0)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_constant_is_flat_after_warmup():
    cfg = OptimConfig(schedule="constant", warmup_epochs=0.5)
    assert lr_factor(cfg, 0.25, 3) == pytest.approx(0.5)
    assert [lr_factor(cfg, p, 3) for p in (0.5, 1.7, 3.0)] == [1.0, 1.0, 1.0]


def test_scheduler_warmup_is_smooth_within_an_epoch_and_exact_at_boundaries():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = OptimConfig(name="sgd", lr=0.4, schedule="cosine", warmup_epochs=1.0)
    scheduler = Scheduler(optimizer, cfg, epochs=3, steps_per_epoch=4)
    lrs = [scheduler.step(0, i) for i in range(4)]
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4)
    # More batches than the estimate: the epoch still ends at progress 1, never beyond.
    assert scheduler.step(0, 9) == pytest.approx(0.4)
    assert scheduler.global_step == 5


def test_scheduler_state_round_trips():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = Scheduler(optimizer, OptimConfig(), epochs=4, steps_per_epoch=3)
    for i in range(3):
        scheduler.step(0, i)
    restored = Scheduler(optimizer, OptimConfig(), epochs=4, steps_per_epoch=3)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.state_dict() == {"global_step": 3, "progress": 1.0}


def test_with_last_marks_only_the_final_item():
    assert list(with_last([1, 2, 3])) == [(1, False), (2, False), (3, True)]
    assert list(with_last([])) == []


def test_training_knobs_are_logged_under_their_dotted_names():
    cfg = load_config(
        None,
        [
            "optim.schedule=step",
            "optim.warmup_epochs=1",
            "train.grad_accum=4",
            "train.clip_grad_norm=1.0",
            "train.label_smoothing=0.1",
            "train.precision=bf16",
        ],
    )
    flat = cfg.flat()
    assert flat["optim.schedule"] == "step" and flat["optim.warmup_epochs"] == 1.0
    assert flat["train.grad_accum"] == 4 and flat["train.precision"] == "bf16"
    for key in ("optim.step_epochs", "optim.gamma", "train.resume_from", "train.max_failures"):
        assert key in flat
    assert math.isclose(flat["train.label_smoothing"], 0.1)


def test_unknown_schedule_or_precision_is_a_clear_error():
    with pytest.raises(VidrayError, match=r"optim.schedule must be one of cosine, step, constant"):
        load_config(None, ["optim.schedule=linear"])
    with pytest.raises(VidrayError, match=r"train.precision must be one of fp32, bf16"):
        load_config(None, ["train.precision=fp16"])


def _batches(n: int, size: int = 2) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "frames": torch.randint(0, 256, (size, 4, 32, 32, 3), dtype=torch.uint8, generator=gen),
            "label": torch.randint(0, 4, (size,), generator=gen),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        (["train.grad_accum=2"], 3),  # 5 batches: steps after 2, 4 and the last
        (["train.clip_grad_norm=0.01", "train.label_smoothing=0.2"], 5),
        (["train.precision=bf16"], 5),  # bf16 autocast also runs on CPU (slowly)
    ],
)
def test_train_epoch_steps_once_per_accumulated_group(overrides, steps):
    from vidray.train.loop import build_model, make_optimizer, train_epoch
    from vidray.train.tasks import task_of

    cfg = load_config(
        None,
        ["model.name=simple3d", "model.width=4", "clip.T=4", "optim.warmup_epochs=1", *overrides],
    )
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(cfg.optim, model.parameters())
    scheduler = Scheduler(optimizer, cfg.optim, epochs=2, steps_per_epoch=steps)
    totals, first_lr = train_epoch(
        model, _batches(5), optimizer, scheduler, 0, cfg, torch.device("cpu"), task=task_of(cfg)
    )
    assert scheduler.global_step == steps
    assert first_lr == pytest.approx(cfg.optim.lr / steps)  # one step into a 1-epoch warm-up
    assert totals[2].item() == 10 and math.isfinite(totals[0].item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
