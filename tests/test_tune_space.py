"""Sweep files without Ray: parsing, the trials a space expands to, and bad sweeps."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vidray.config import load_config
from vidray.errors import VidrayError
from vidray.train.driver import check_model
from vidray.train.inputs import resolve_inputs
from vidray.tune.space import SEARCHERS, expand, load_sweep
from vidray.tune.sweep import absolute_paths, check_sweep

REPO = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path: Path, space: dict, sweep: dict | None = None, **sections) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep or {}, "space": space, **sections}))
    return path


def test_grid_keys_multiply_and_keys_a_family_lacks_are_left_out(tmp_path):
    path = sweep_file(
        tmp_path,
        {
            "model.name": {"grid": ["single_frame", "two_stream", "c3d"]},
            "model.fusion": {"grid": ["avg", "conv"]},  # two_stream's knob only
            "flow.L": {"grid": [5, 10]},  # flow models only
            "clip.stride": {"grid": [1, 2]},  # every family
        },
    )
    trials = expand(load_sweep(path))
    by_family = {}
    for trial in trials:
        by_family.setdefault(trial["model.name"], []).append(trial)
    assert len(by_family["single_frame"]) == 2 and len(by_family["c3d"]) == 2
    assert len(by_family["two_stream"]) == 2 * 2 * 2
    for family in ("single_frame", "c3d"):
        assert all(set(t) == {"model.name", "clip.stride"} for t in by_family[family])
    assert len({tuple(sorted(t.items())) for t in trials}) == len(trials)  # no duplicates


def test_random_keys_are_drawn_per_sample_within_their_ranges_and_reproducibly(tmp_path):
    space = {
        "model.name": {"grid": ["simple3d", "c3d"]},
        "optim.lr": {"loguniform": [1e-4, 1e-2]},
        "optim.weight_decay": {"uniform": [0.0, 0.1]},
        "clip.T": {"randint": [4, 9]},
        "clip.crop": {"choice": [48, 56]},
        "model.width": {"choice": [8, 16], "when": {"model.name": "c3d"}},
    }
    path = sweep_file(tmp_path, space, {"num_samples": 5, "seed": 3})
    trials = expand(load_sweep(path))
    assert len(trials) == 2 * 5
    assert all(1e-4 <= t["optim.lr"] <= 1e-2 for t in trials)
    assert all(0.0 <= t["optim.weight_decay"] <= 0.1 for t in trials)
    assert all(4 <= t["clip.T"] < 9 and isinstance(t["clip.T"], int) for t in trials)
    assert {t["clip.crop"] for t in trials} <= {48, 56}
    assert all(("model.width" in t) == (t["model.name"] == "c3d") for t in trials)
    # log-uniform: the draws spread over decades, not bunched at the top
    assert min(math.log10(t["optim.lr"]) for t in trials) < -2.5
    assert expand(load_sweep(path)) == trials
    reseeded = sweep_file(tmp_path, space, {"num_samples": 5, "seed": 4})
    assert expand(load_sweep(reseeded)) != trials


def test_a_trial_config_is_the_shared_config_with_its_overrides(tmp_path):
    path = sweep_file(
        tmp_path,
        {"clip.T": {"grid": [4, 8]}},
        {"name": "s"},
        optim={"lr": 0.01},
        train={"epochs": 3},
    )
    sweep = load_sweep(path, ["optim.lr=0.02", "sweep.num_samples=2"])
    assert sweep.sweep.num_samples == 2
    configs = [sweep.config(t) for t in expand(sweep)]
    assert [c.clip.T for c in configs] == [4, 4, 8, 8]
    assert all(c.optim.lr == 0.02 and c.train.epochs == 3 for c in configs)
    assert configs[0] == load_config(None, ["clip.T=4", "optim.lr=0.02", "train.epochs=3"])


@pytest.mark.parametrize(
    ("space", "sweep", "message"),
    [
        ({"clip.TT": {"grid": [4]}}, {}, r"space.clip.TT: .*unknown key 'clip.TT' .*'clip.T'"),
        ({"clip.T": {"choice": []}}, {}, r"space.clip.T: choice needs a non-empty list"),
        ({"clip.T": {"grid": ["eight"]}}, {}, r"space.clip.T: config: clip.T must be int"),
        ({"clip.T": {"grid": [4], "choice": [8]}}, {}, r"space.clip.T: expected exactly one"),
        ({"clip.T": [4, 8]}, {}, r"space.clip.T: expected \{grid\|choice"),
        ({"optim.lr": {"loguniform": [0, 1]}}, {}, r"loguniform needs 0 < low < high"),
        ({"optim.lr": {"uniform": [1]}}, {}, r"uniform needs \[low, high\]"),
        ({"clip.T": {"grid": [4]}}, {"metrc": "x"}, r"unknown key 'sweep.metrc'"),
        ({"clip.T": {"grid": [4]}}, {"num_samples": 0}, r"sweep.num_samples=0"),
        ({"clip.T": {"grid": [4]}}, {"mode": "best"}, r"sweep.mode"),
        ({}, {}, r"'space' must map config keys"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, space, sweep, message):
    with pytest.raises(VidrayError, match=message) as info:
        load_sweep(sweep_file(tmp_path, space, sweep))
    assert "\n" not in str(info.value)


def test_a_typo_in_the_shared_config_is_an_error(tmp_path):
    path = sweep_file(tmp_path, {"clip.T": {"grid": [4]}}, optim={"learning_rate": 0.1})
    with pytest.raises(VidrayError, match=r"unknown key 'optim.learning_rate'"):
        load_sweep(path)


def test_a_clip_too_short_for_a_family_fails_before_any_trial(motion_data, tmp_path, monkeypatch):
    """slow_fusion's temporal kernels need 10 frames: found by a meta-device forward."""
    monkeypatch.chdir(tmp_path)
    path = sweep_file(
        tmp_path,
        {"model.name": {"grid": ["simple3d", "slow_fusion"]}},
        train={"data": str(motion_data)},
        clip={"T": 8, "crop": 48},
    )
    sweep = load_sweep(path)
    with pytest.raises(VidrayError, match=r"trial 1 \(model.name=slow_fusion\): .*at least 10"):
        check_sweep(sweep)


def sweep_with_a_clip_too_long(tmp_path, data) -> Path:
    """A sweep whose trial 1 asks for 12 frames at stride 2: 23 > the 16 stored."""
    return sweep_file(
        tmp_path,
        {"clip.T": {"grid": [4, 12]}},
        train={"data": str(data)},
        model={"name": "simple3d", "width": 8},
        clip={"crop": 48},
    )


def test_a_clip_longer_than_the_stored_window_fails_before_any_trial(
    motion_data, tmp_path, monkeypatch
):
    """Trial 1 asks for 12 frames at stride 2 (23 > 16 stored): named, before Tune starts."""
    monkeypatch.chdir(tmp_path)
    path = sweep_with_a_clip_too_long(tmp_path, motion_data)
    sweep = load_sweep(path)
    with pytest.raises(VidrayError, match=r"trial 1 \(clip.T=12\): .*spans 23 frames"):
        check_sweep(sweep)


def test_the_shipped_sweep_files_expand_and_fit_their_data(motion_data, tmp_path, monkeypatch):
    """configs/tune/*: every trial builds and fits the demo's 16-frame windows."""
    monkeypatch.chdir(tmp_path)  # where a check looks for an earlier sweep of the name
    configs = sorted((REPO / "configs" / "tune").glob("*.yaml"))
    assert {p.stem for p in configs} >= {
        "fusion_sweep",
        "clip_sweep",
        "fusion_sweep_demo",
        "clip_sweep_demo",
        "lr_search_demo",
        "pbt_ucf101",
    }
    for path in configs:
        sweep = load_sweep(path)
        trials = expand(sweep)  # a searcher's: random draws of its space stand in
        assert len(trials) >= 4, path
        if sweep.sweep.search == "grid":  # a searcher or PBT tunes one family
            assert len({sweep.config(t).model.name for t in trials}) >= 2, path
        if path.stem.endswith("_demo"):
            plan = check_sweep(load_sweep(path, [f"train.data={motion_data}"]))
            if sweep.sweep.search in SEARCHERS:  # proposed as it runs, checked in the driver
                assert plan.trials == [] and all(plan.refusal(t) is None for t in trials)
            else:
                assert plan.trials == trials
        else:  # no UCF101 here: every trial's model still takes its clip (shapes only)
            for trial in trials:
                check_model(resolve_inputs(sweep.config(trial)), num_classes=101)


def test_every_path_of_a_sweep_means_where_the_command_was_typed(
    motion_data, tmp_path, monkeypatch
):
    """Tune runs each trial in a directory of its own: the driver makes the data, the
    storage, a local weights file, the output and the default tracking URI
    (sqlite:///mlflow.db) absolute before any trial starts; a registry name stays."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(motion_data, "data")
    torch.save({}, "weights.pt")  # a state_dict: the check reads what weights imply
    path = sweep_file(
        tmp_path,
        {"clip.T": {"grid": [4, 8]}},
        {"name": "paths"},
        model={"name": "simple3d", "width": 8, "pretrained": "weights.pt"},
        clip={"crop": 48},
    )
    plan = check_sweep(load_sweep(path, ["train.data=data"]))
    here = tmp_path.resolve()
    assert len(plan.trials) == 2
    for cfg in map(plan.trial_config, plan.trials):
        assert cfg.train.data == str(here / "data")
        assert cfg.train.storage_path == str(here / "runs")
        assert cfg.model.pretrained == str(here / "weights.pt")
        assert cfg.mlflow.tracking_uri == f"sqlite:///{here / 'mlflow.db'}"
    assert plan.experiment == f"{here / 'runs'}/paths" and plan.output == here / "sweeps" / "paths"
    registry = load_config(None, ["model.pretrained=ResNet18_Weights.IMAGENET1K_V1"])
    assert "model.pretrained" not in absolute_paths(registry)


def test_a_sweep_is_checked_without_starting_or_importing_ray(motion_data, tmp_path):
    """What the CLI runs before Ray starts: a bad trial is a one-line error."""
    path = sweep_with_a_clip_too_long(tmp_path, motion_data)
    script = (
        "import sys\n"
        "from vidray.errors import VidrayError\n"
        "from vidray.tune.space import load_sweep\n"
        "from vidray.tune.sweep import check_sweep\n"
        "try:\n"
        "    check_sweep(load_sweep(sys.argv[1]))\n"
        "except VidrayError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    error, modules = done.stdout.strip().splitlines()
    assert error.startswith("trial 1 (clip.T=12): ") and "spans 23 frames" in error
    assert modules == "[]"
