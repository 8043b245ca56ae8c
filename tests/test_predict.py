"""`vidray predict`'s core: a new video decoded as the checkpoint's data was stored and
scored as `vidray evaluate` scores a video of that data."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import REPO, as_from_a_terminal, own_lines
from untrained import save_untrained

from vidray.cli import run_command
from vidray.config import load_config
from vidray.data.decode import probe
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.data.reading import iter_clip_batches
from vidray.device import Normalization, model_input
from vidray.predict.classifier import WindowScorer, load_classifier, predict_video
from vidray.train.loop import build_model

TINY = ["model.name=simple3d", "model.width=8", "clip.T=4", "clip.stride=2", "clip.crop=48"]


@pytest.fixture(scope="module")
def untrained(motion_data, tmp_path_factory):
    """(checkpoint, config, model): an untrained model saved with its data's dataset.yaml."""
    cfg = load_config(None, [*TINY, f"train.data={motion_data}"])
    info = read_dataset_info(motion_data)
    torch.manual_seed(0)
    model = build_model(cfg, len(info["classes"]))
    directory = tmp_path_factory.mktemp("predict") / "checkpoint"
    save_untrained(directory, model, cfg, info["classes"], dataset=info)
    return directory, cfg, model.eval()


@torch.no_grad()
def evaluate_probs(cfg, model, **views) -> dict[str, np.ndarray]:
    """Per video id of the val split: the mean softmax over all its clips, from the
    stored shards (what `vidray evaluate` computes)."""
    sums, counts = defaultdict(float), defaultdict(int)
    for batch in iter_clip_batches(
        cfg.train.data, split="val", clip=cfg.clip, flow_L=0, video_ids=True, **views
    ):
        ids = batch.pop("video_id")
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        probs = torch.softmax(model(model_input(tensors, "cpu", Normalization.of(cfg.clip))), 1)
        for video_id, p in zip(ids, probs.double().numpy(), strict=True):
            sums[video_id] = sums[video_id] + p
            counts[video_id] += 1
    return {v: sums[v] / counts[v] for v in sums}


@pytest.mark.parametrize("views", [(1, 1), (2, 3)])
def test_a_video_is_scored_as_evaluate_scores_it_from_the_shards(untrained, motion_data, views):
    directory, cfg, model = untrained
    temporal, spatial = views
    expected = evaluate_probs(cfg, model, temporal_views=temporal, spatial_views=spatial)
    paths = {row["video_id"]: row["path"] for row in read_manifest(motion_data)}
    scorer = WindowScorer(
        load_classifier(directory),
        device=torch.device("cpu"),
        temporal_views=temporal,
        spatial_views=spatial,
    )
    assert expected
    for video_id, probs in expected.items():
        found = predict_video(Path(paths[video_id]), scorer)
        np.testing.assert_allclose(found.probs, probs, rtol=1e-5, atol=1e-7)
        assert len(found.starts) == 2 and found.starts[1] == pytest.approx(1.6)


def predict(*args: str) -> int:
    return run_command("predict", [str(a) for a in args])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def write_hostile_files(folder: Path, good: Path) -> dict[str, str]:
    """Files no decoder reads, each named by the reason predict gives for it."""
    data = good.read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video\n")
    (folder / "text.mp4").write_text("not a video either\n")
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / ".hidden.mp4").write_bytes(data)  # hidden: not an input
    return {"empty.mp4", "notes.txt", "text.mp4", "truncated.mp4"}


def test_a_folder_is_a_ray_job_that_answers_every_file_and_a_rerun_keeps_the_answers(
    untrained, motion_data, tmp_path, monkeypatch, capsys
):
    """As a user types: relative paths, default output (predictions/<folder>)."""
    directory, _, _ = untrained
    monkeypatch.chdir(tmp_path)
    manifest = sorted(read_manifest(motion_data), key=lambda r: r["video_id"])
    videos = Path("new")
    (videos / "sub").mkdir(parents=True)
    good = {}
    for row, place in zip(manifest[:3], ["a.mp4", "b.mp4", "sub/c.mp4"], strict=True):
        shutil.copy(row["path"], videos / place)
        good[(videos / place).resolve()] = row["path"]
    hostile = write_hostile_files(videos, Path(manifest[0]["path"]))

    scorer = WindowScorer(load_classifier(directory), device=torch.device("cpu"))
    expected = {str(path): predict_video(path, scorer) for path in good}
    for _ in range(2):
        assert predict("--checkpoint", directory, "--video", videos) == 0
        out = capsys.readouterr().out
        rows = read_rows(Path("predictions/new/predictions.csv"))
        assert len(rows) == len(good) + len(hostile)
        by_video = {row["video"]: row for row in rows}
        for video, prediction in expected.items():
            row = by_video[video]
            assert row["status"] == "ok" and row["error"] == ""
            top = prediction.top(5)
            assert [row[f"label_{r}"] for r in range(1, 5)] == [c for c, _ in top[:4]]
            assert float(row["score_1"]) == pytest.approx(top[0][1], abs=1e-6)
        skipped = {Path(v).name: row for v, row in by_video.items() if row["status"] != "ok"}
        assert set(skipped) == hostile
        assert all(row["error"] and not row["label_1"] for row in skipped.values())
        timeline = read_rows(Path("predictions/new/timeline.csv"))
        assert sorted({row["video"] for row in timeline}) == sorted(expected)
        assert len(timeline) == sum(len(p.starts) for p in expected.values())
    # The second run answered nothing again but the skipped files, and said so.
    assert "3 answered before" in out and "0 video(s) answered" in out
    journal = Path("predictions/new/_journal.jsonl").read_text().splitlines()
    assert len(journal) == 2 * len(hostile) + len(good)


def test_a_csv_of_paths_gives_json_lines_with_a_row_for_a_missing_file(
    untrained, motion_data, tmp_path, monkeypatch
):
    directory, _, _ = untrained
    monkeypatch.chdir(tmp_path)
    row = read_manifest(motion_data)[0]
    shutil.copy(row["path"], "clip.mp4")
    Path("list.csv").write_text("path\nclip.mp4\ngone.mp4\n")
    assert predict("--checkpoint", directory, "--video", "list.csv", "predict.format=jsonl") == 0
    lines = Path("predictions/list/predictions.jsonl").read_text().splitlines()
    answers = {Path(a["video"]).name: a for a in map(json.loads, lines)}
    assert set(answers) == {"clip.mp4", "gone.mp4"}
    assert (
        answers["gone.mp4"]["status"] == "skipped"
        and "no such file" in answers["gone.mp4"]["error"]
    )
    found = answers["clip.mp4"]
    assert found["status"] == "ok" and len(found["top"]) == 4  # top_k 5 of 4 classes
    assert [w["start_s"] for w in found["timeline"]] == pytest.approx([0.0, 1.6])


def test_one_video_runs_in_process_and_prints_its_top_classes(
    untrained, motion_data, tmp_path, monkeypatch, capsys
):
    directory, _, _ = untrained
    monkeypatch.chdir(tmp_path)
    shutil.copy(read_manifest(motion_data)[0]["path"], "clip.mp4")
    args = ["--video", "clip.mp4", "--top-k", "2", "--render", "drawn.mp4"]
    assert predict("--checkpoint", directory, *args) == 0
    out = capsys.readouterr().out
    assert "predict: labels and timeline drawn on drawn.mp4" in out
    assert probe("drawn.mp4").num_frames == probe("clip.mp4").num_frames
    (line,) = [x for x in out.splitlines() if x.startswith("predict: /")]
    prediction = predict_video(
        Path("clip.mp4"), WindowScorer(load_classifier(directory), device=torch.device("cpu"))
    )
    (first, _), (second, _) = prediction.top(2)
    assert line.endswith(
        f"clip.mp4: {first} {prediction.top(1)[0][1]:.3f}, {second} {prediction.top(2)[1][1]:.3f}"
    )
    rows = read_rows(Path("predictions/clip/predictions.csv"))
    assert [r["label_1"] for r in rows] == [first] and "label_3" not in rows[0]


def test_bad_inputs_are_one_line_errors(untrained, motion_data, tmp_path, monkeypatch, capsys):
    directory, _, _ = untrained
    monkeypatch.chdir(tmp_path)
    shutil.copy(read_manifest(motion_data)[0]["path"], "clip.mp4")
    Path("folder").mkdir()
    Path("empty").mkdir()
    Path("bad.csv").write_text("video\nclip.mp4\n")
    (tmp_path / "not_a_checkpoint").mkdir()
    cases = [
        (["--video", "clip.mp4"], "--checkpoint DIR"),
        (["--checkpoint", directory], "--video PATH"),
        (["--checkpoint", directory, "--video", "missing.mp4"], "no such file, folder or URI"),
        (["--checkpoint", directory, "--video", "empty"], "holds no files"),
        (["--checkpoint", directory, "--video", "bad.csv"], "'path' column"),
        (["--checkpoint", "not_a_checkpoint", "--video", "clip.mp4"], "not_a_checkpoint"),
        (["--checkpoint", directory, "--video", "clip.mp4", "--top-k", "0"], "predict.top_k=0"),
        (["--checkpoint", directory, "--video", "clip.mp4", "--render", "x.avi"], ".mp4"),
        (["--checkpoint", directory, "--video", "clip.mp4", "predict.tpo_k=3"], "tpo_k"),
    ]
    for args, message in cases:
        assert predict(*args) == 2, args
        err = own_lines(capsys.readouterr().err)
        assert len(err) == 1 and message in err[0], (args, err)
    # One video that does not decode is an answer row too, and the command says why.
    Path("text.mp4").write_text("not a video")
    assert predict("--checkpoint", directory, "--video", "text.mp4") == 0
    assert "skipped" in capsys.readouterr().out
    (row,) = read_rows(Path("predictions/text/predictions.csv"))
    assert row["status"] == "skipped" and row["error"]


def test_ctrl_c_keeps_the_answers_so_far_and_the_same_command_answers_the_rest(
    untrained, motion_data, tmp_path, monkeypatch, capsys
):
    directory, _, _ = untrained
    videos = tmp_path / "new"
    videos.mkdir()
    source = Path(read_manifest(motion_data)[0]["path"])
    for i in range(30):
        shutil.copy(source, videos / f"clip_{i:02d}.mp4")
    command = [sys.executable, "-m", "pipelines.predict", "--checkpoint", str(directory)]
    job = subprocess.Popen(
        [*command, "--video", "new", "ray.num_cpus=2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=as_from_a_terminal,
    )
    journal = tmp_path / "predictions" / "new" / "_journal.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (journal.exists() and journal.read_text()) and job.poll() is None:
            assert time.monotonic() < deadline, "no answer in 300 s"
            time.sleep(0.1)
        os.killpg(job.pid, signal.SIGINT)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, stderr[-3000:]
    (line,) = [s for s in stderr.splitlines() if s.startswith("python -m pipelines.predict: ")]
    kept = len(journal.read_text().splitlines())
    assert f": interrupted: {kept} of 30 videos answered, kept in " in line and 1 <= kept < 30

    monkeypatch.chdir(tmp_path)
    assert predict("--checkpoint", directory, "--video", "new") == 0
    assert f"{30 - kept} video(s) answered, {kept} answered before" in capsys.readouterr().out
    rows = read_rows(Path("predictions/new/predictions.csv"))
    assert len(rows) == 30 and {row["status"] for row in rows} == {"ok"}
    assert len({(row["label_1"], row["score_1"]) for row in rows}) == 1  # 30 copies of a video
