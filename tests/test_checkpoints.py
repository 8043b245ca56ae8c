"""Checkpoints from untrusted places: loading one never runs code, and a damaged one is
a one-line error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from untrained import save_untrained

from vidray.checkpoints import FORMAT, META_FILE, STATE_FILE, check_resumable, load_checkpoint
from vidray.config import load_config
from vidray.errors import VidrayError
from vidray.models import build


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: what a tampered checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    cfg = load_config(None, ["model.name=simple3d", "model.width=4"])
    model = build("simple3d", num_classes=3, width=4)
    return save_untrained(tmp_path / "ckpt", model, cfg, ["a", "b", "c"])


def test_a_checkpoint_loads_as_saved(checkpoint):
    state, meta = load_checkpoint(checkpoint)
    model = build("simple3d", num_classes=3, width=4)
    model.load_state_dict(state["model"])
    assert meta["classes"] == ["a", "b", "c"]
    assert state["torch_rng"].dtype == torch.uint8


def test_a_tampered_checkpoint_is_refused_without_running_its_code(checkpoint, tmp_path):
    marker = tmp_path / "code_ran"
    state = torch.load(checkpoint / STATE_FILE, weights_only=True)
    torch.save({**state, "payload": _RunsCode(marker)}, checkpoint / STATE_FILE)
    refused = r"holds more than weights \(it asks for io\.open\): refused"
    with pytest.raises(VidrayError, match=refused):
        load_checkpoint(checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 100])
def test_a_truncated_checkpoint_is_a_one_line_error(checkpoint, keep):
    data = (checkpoint / STATE_FILE).read_bytes()
    (checkpoint / STATE_FILE).write_bytes(data[:keep])
    with pytest.raises(VidrayError, match=rf"{STATE_FILE} is damaged or incomplete") as info:
        load_checkpoint(checkpoint)
    assert "\n" not in str(info.value)


def test_a_folder_without_state_is_not_a_checkpoint(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(VidrayError, match="is not a vidray checkpoint"):
        load_checkpoint(tmp_path / "empty")


def with_meta(checkpoint: Path, **changes) -> Path:
    """``checkpoint`` with its meta.yaml changed: a key set to None is removed."""
    meta = yaml.safe_load((checkpoint / META_FILE).read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    (checkpoint / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
    return checkpoint


def resumable(checkpoint: Path, epochs: int) -> dict:
    model = build("simple3d", num_classes=3, width=4)
    return check_resumable(checkpoint, model=model, classes=["a", "b", "c"], epochs=epochs)


def test_a_checkpoint_of_epoch_2_resumes_a_run_of_3_epochs(checkpoint):
    meta = resumable(with_meta(checkpoint, epoch=2), epochs=3)
    assert (meta["format"], meta["epoch"]) == (FORMAT, 2)
    state, _ = load_checkpoint(checkpoint)
    assert state["format"] == FORMAT


def test_a_checkpoint_that_counts_epochs_from_0_is_refused(checkpoint):
    """Before format 2, ``epoch`` was the last epoch's index: resuming would redo one."""
    with pytest.raises(VidrayError, match=r"was written by an older vidray: its epochs count "):
        resumable(with_meta(checkpoint, format=None, epoch=1), epochs=3)


@pytest.mark.parametrize("done", [3, 5])
def test_a_checkpoint_with_every_epoch_done_asks_for_more_epochs(checkpoint, done):
    """Not a Ray start-up that trains nothing and fails with "no checkpoint"."""
    with pytest.raises(VidrayError) as info:
        resumable(with_meta(checkpoint, epoch=done), epochs=3)
    assert str(info.value) == (
        f"train.resume_from={checkpoint} has already trained {done} epochs and "
        f"train.epochs=3: raise train.epochs above {done} to continue"
    )


def test_a_model_fine_tuned_from_weights_loads_without_them(tmp_path):
    """The checkpoint of a run that started from a weights file is loaded from the
    checkpoint alone: the file is gone where it is evaluated (another machine), and a
    torchvision weights name would be fetched again."""
    from torchvision.models import resnet18

    from vidray.train.evaluate import load_model
    from vidray.train.loop import build_model

    weights = tmp_path / "resnet18.pt"
    torch.save(resnet18().state_dict(), weights)
    cfg = load_config(None, ["model.name=single_frame", f"model.pretrained={weights}"])
    model = build_model(cfg, 3)
    directory = save_untrained(tmp_path / "ckpt", model, cfg, ["a", "b", "c"])
    weights.unlink()
    loaded, trained, _ = load_model(directory)
    assert trained.model.pretrained == str(weights)  # the record of where it started
    for (name, saved), restored in zip(
        model.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(saved, restored), name
