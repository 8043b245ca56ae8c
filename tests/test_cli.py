"""The command line as a user meets it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from commands import REPO, run_module

from vidray.cli import main, run_command
from vidray.config import all_settings, load_config


def vidray(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_module("vidray.cli", *args, cwd=cwd, timeout=120)


def test_help_lists_the_commands():
    out = vidray("--help")
    assert out.returncode == 0
    for command in ("ingest", "train", "evaluate", "demo", "synth"):
        assert command in out.stdout


def test_an_unknown_command_is_named_with_the_closest_one():
    out = vidray("trian")
    assert out.returncode == 2
    assert (
        out.stderr.splitlines()[0]
        == "vidray: error: unknown command 'trian' (did you mean 'train'?)"
    )
    assert out.stdout == ""


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vidray {version('vidray')}\n"


def test_a_command_help_shows_each_flag_with_its_choices_and_default(capsys):
    with pytest.raises(SystemExit) as done:
        main(["ingest", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at any width
    assert "--layout {folders,flat,csv,ucf101,kinetics,ava}" in text
    assert "(sets ingest.layout; default folders)" in text
    assert "(sets ingest.input)" in text and "vidray config [SECTION]" in text


def test_a_flag_value_outside_its_choices_is_refused_before_anything_runs(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["ingest", "--input", str(tmp_path), "--layout", "folder"])
    assert done.value.code == 2
    assert "invalid choice: 'folder'" in capsys.readouterr().err


def test_config_lists_every_key_with_its_default_and_meaning(capsys):
    assert main(["config"]) == 0
    listed = capsys.readouterr().out
    keys, section = [], ""
    for line in listed.splitlines():
        if line.startswith("  "):
            keys.append(f"{section}.{line.split(':')[0].strip()}")
        else:
            section = line.rstrip(":")
    assert keys[: len(all_settings())] == [s.key for s in all_settings()]
    assert "  T: null  # int or null; frames per clip (None = the model's declared T)" in listed
    assert "  scheduler: asha  # asha|fifo" in listed  # the sweep section too


def test_config_shows_a_files_values_for_the_sections_asked(capsys):
    assert main(["config", "train", "--config", str(REPO / "configs/demo.yaml")]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("train:\n") and "\nclip:" not in listed
    demo = load_config(REPO / "configs/demo.yaml")
    assert f"  epochs: {demo.train.epochs}  # int" in listed


def test_config_names_an_unknown_section(capsys):
    assert main(["config", "clp"]) == 2
    assert capsys.readouterr().err.startswith(
        "vidray config: error: no section 'clp' (did you mean 'clip'?); sections: ingest, flow"
    )


def test_synth_writes_a_folders_dataset(tmp_path):
    out = vidray(
        "synth",
        "--output",
        str(tmp_path / "v"),
        "--classes",
        "2",
        "--videos-per-class",
        "2",
        "--frames",
        "12",
    )
    assert out.returncode == 0, out.stderr
    folders = sorted(p.parent.name for p in (tmp_path / "v").rglob("*.mp4"))
    assert folders == ["translate_left"] * 2 + ["translate_right"] * 2


def test_synth_writes_an_ava_layout_that_lists(tmp_path):
    from vidray.data.sources import list_sources

    root = tmp_path / "ava"
    out = vidray("synth", "--task", "ava", "--output", str(root), "--videos", "4", "--seconds", "3")
    assert out.returncode == 0, out.stderr
    listing = list_sources(str(root), layout="ava")
    assert sorted(e.split for e in listing.entries) == ["train"] * 3 + ["val"]
    assert len(listing.classes) >= 4 and all(e.keyframes for e in listing.entries)


def test_synth_bad_arguments_are_one_line(tmp_path):
    for args in (["--size", "big"], ["--classes", "99"], ["--task", "ava", "--videos", "1"]):
        out = vidray("synth", "--output", str(tmp_path), *args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_config_typo_is_one_line_without_traceback(tmp_path):
    out = vidray("train", "--data", str(tmp_path), "clip.TT=8")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "vidray train: error: config: unknown key 'clip.TT' (did you mean 'clip.T'?); "
        "valid: T, stride, crop, hflip, mean, std"
    )


def test_pipeline_module_reports_a_missing_config_file(tmp_path):
    out = run_module("pipelines.train", "--config", str(tmp_path / "none.yaml"), timeout=120)
    assert out.returncode == 2
    assert "config file not found" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # a subprocess
def test_models_table_lists_every_family_with_its_size():
    from vidray.models import available

    out = vidray("models")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert sorted(lines) == available()
    assert lines["c3d"][1] == "79.63"  # 487-class C3D is 79.99 M; 400 classes here


# Nothing listens on the discard port: a command that reached Ray would fail to connect
# instead of printing its one line, so these cases show the check ran before Ray.
NO_RAY = {"RAY_ADDRESS": "127.0.0.1:9"}
IMPORTS = {"PYTHONPROFILEIMPORTTIME": "1"}  # every module imported, listed on stderr
SWEEP = REPO / "configs/tune/fusion_sweep_demo.yaml"


def test_mistakes_that_need_no_cluster_are_found_before_ray_starts(
    tmp_path, motion_videos, motion_data
):
    """Each is one line, from a check that runs before Ray. Those of the data and the
    settings come before torch is imported too (seconds of a laptop's start-up); only a
    model's own checks and a sweep's trials need it."""
    data = ["train", "--data", str(motion_data), "clip.crop=48"]
    cases = [
        (["ingest", "--input", "missing", "--output", "out"], "missing", False),
        (
            ["ingest", "--input", str(motion_videos), "--output", "out", "ingest.fps=0"],
            "fps",
            False,
        ),
        (["train"], "train.data is not set", False),
        (["train", "--data", "out"], "out", False),
        ([*data, "model.name=simple_3d"], "did you mean 'simple3d'", False),
        ([*data, "optim.lr=-0.1"], "optim.lr", False),
        ([*data, "clip.T=16", "clip.stride=2"], "spans 31 frames", False),
        ([*data, "model.depth=50"], "takes no argument depth", True),
        (["tune", "--config", str(SWEEP), "--data", "out"], "out", True),
        (
            ["tune", "--config", str(SWEEP), "--data", str(motion_data), "clip.stride=2"],
            "spans",
            True,
        ),
    ]
    for args, words, needs_torch in cases:
        start = time.monotonic()
        out = run_module("vidray.cli", *args, cwd=tmp_path, timeout=120, env=IMPORTS | NO_RAY)
        seconds = time.monotonic() - start
        assert out.returncode == 2, (args, out.stderr)
        imported = {
            line.rsplit("|", 1)[1].strip()
            for line in out.stderr.splitlines()
            if line.startswith("import time:")
        }
        (line,) = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
        assert line.startswith(f"vidray {args[0]}: error: ") and words in line, line
        assert ("torch" in imported) == needs_torch, args
        assert "ray" not in imported, args
        assert not (tmp_path / "out").exists()  # nothing was made
        print(f"{' '.join(args)}: {seconds:.1f} s")


def test_a_command_gives_back_the_sigterm_handler_it_found(tmp_path, monkeypatch):
    """Inside a command SIGTERM stops it as Ctrl-C does; the caller's handler (here a
    test's, in a notebook its own) comes back after the command, whatever its outcome."""
    seen = []
    mine = signal.signal(signal.SIGTERM, lambda *_: seen.append("caller"))
    monkeypatch.chdir(tmp_path)
    try:
        assert run_command("ingest", ["--input", "missing", "--output", "out"]) == 2
        assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == ["caller"]
    finally:
        signal.signal(signal.SIGTERM, mine)
