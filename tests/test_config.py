import re
from pathlib import Path

import pytest
import yaml

from vidray.config import Config, load_config
from vidray.errors import VidrayError


def test_overrides_are_typed_by_the_field():
    cfg = load_config(None, ["clip.T=16", "optim.lr=1e-2", "train.use_gpu=true", "optim.name=sgd"])
    assert cfg.clip.T == 16 and isinstance(cfg.clip.T, int)
    assert cfg.optim.lr == pytest.approx(0.01)
    assert cfg.train.use_gpu is True
    assert cfg.optim.name == "sgd"


def test_int_is_accepted_for_a_float_field():
    assert load_config(None, ["ingest.fps=25"]).ingest.fps == 25.0


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(VidrayError, match=r"unknown key 'clip.TT' \(did you mean 'clip.T'\?\)"):
        load_config(None, ["clip.TT=4"])


def test_unknown_section_is_an_error():
    with pytest.raises(VidrayError, match=r"unknown key 'clipz'"):
        load_config(None, ["clipz.T=4"])


def test_wrong_type_names_the_key():
    with pytest.raises(VidrayError, match=r"clip.T must be int, got 'abc'"):
        load_config(None, ["clip.T=abc"])


def test_value_outside_its_choices_lists_them():
    with pytest.raises(VidrayError, match=r"flow.backend must be one of dis, farneback"):
        load_config(None, ["flow.backend=magic"])


def test_override_without_equals_is_an_error():
    with pytest.raises(VidrayError, match=r"section.key=value"):
        load_config(None, ["clip.T"])


def test_yaml_typo_in_a_file_names_the_file_and_key(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("clip:\n  T: 8\n  strid: 2\n")
    with pytest.raises(VidrayError, match=r"unknown key 'clip.strid' \(did you mean 'clip.stride'"):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("clip:\n  T: [8\n")
    with pytest.raises(VidrayError, match=r"c.yaml:\d+: not valid YAML"):
        load_config(path)


def test_missing_config_file_is_an_error(tmp_path: Path):
    with pytest.raises(VidrayError, match=r"config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_extends_merges_the_base_under_the_file_section_by_section(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("clip:\n  T: 8\n  stride: 4\noptim:\n  lr: 0.1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("extends: ../base.yaml\nclip:\n  T: 16\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml", ["optim.lr=0.5"])
    assert (cfg.clip.T, cfg.clip.stride, cfg.optim.lr) == (16, 4, 0.5)


def test_extends_to_a_missing_file_or_a_loop_is_an_error(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(VidrayError, match=r"gone.yaml \(extended by .*a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(VidrayError, match=r"loops back"):
        load_config(tmp_path / "b.yaml")


def test_flat_names_round_trip_through_overrides():
    cfg = load_config(None, ["model.width=8", "clip.crop=64"])
    flat = cfg.flat()
    assert flat["model.width"] == 8 and flat["clip.crop"] == 64
    again = load_config(None, [f"{k}={v}" for k, v in flat.items() if isinstance(v, (int, float))])
    assert again.flat() == {
        **Config().flat(),
        **{k: v for k, v in flat.items() if isinstance(v, (int, float))},
    }


def test_to_yaml_reloads_to_the_same_config(tmp_path: Path):
    cfg = load_config(None, ["clip.T=4", "model.name=simple3d", "ingest.input=/data/x y"])
    path = tmp_path / "saved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


SHIPPED = sorted(Path(__file__).parents[1].glob("configs/**/*.yaml"))


# Sweep files (configs/tune/) are read by load_sweep: tests/test_tune_space.py.
@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name != "tune"])
def test_shipped_configs_load(path: Path):
    load_config(path)


@pytest.mark.parametrize(
    ("old", "new"),
    [("train.num_workers", "train.workers"), ("detect.max_boxes", "detection.max_boxes")],
)
def test_a_renamed_key_is_refused_with_its_new_name(tmp_path, old, new):
    """Never read under the old name, from an override or a file."""
    with pytest.raises(VidrayError, match=rf"config: '{re.escape(old)}' was renamed to '{new}'"):
        load_config(None, [f"{old}=1"])
    section, key = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({section: {key: 1}}))
    with pytest.raises(VidrayError, match="was renamed to"):
        load_config(path)


def test_a_config_stored_under_the_old_names_loads_in_the_new():
    """A checkpoint's meta.yaml from before the renames: a detector's model.pretrained
    was its backbone's classification checkpoint."""
    stored = {
        "train": {"task": "detect", "num_workers": 3},
        "detect": {"max_boxes": 7, "video": "clip.mp4"},
        "model": {"name": "slowfast_r50", "pretrained": "runs/k400/epoch_010"},
    }
    cfg = Config.from_stored(stored)
    assert (cfg.train.workers, cfg.detection.max_boxes, cfg.detect.video) == (3, 7, "clip.mp4")
    assert cfg.detection.backbone_checkpoint == "runs/k400/epoch_010"
    assert cfg.model.pretrained == ""
    assert stored["train"] == {"task": "detect", "num_workers": 3}  # the input is not changed
