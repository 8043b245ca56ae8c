"""`vidray detect` end to end on the synthetic AVA videos: person boxes from a Faster
R-CNN or a proposals CSV, the AVA result CSV, the rendered video, the Ray Data job
over a folder, and one-line errors.

The checkpoint is an untrained SlowFast detector saved here with `save_checkpoint`;
the Faster R-CNN is an untrained torchvision one whose box classifier is rigged to
call every region a person (an untrained one finds nobody), saved to a file as a
user's COCO weights would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from commands import own_lines
from torchvision.models import get_model
from untrained import save_untrained

from vidray.cli import main
from vidray.config import load_config
from vidray.data.ava_files import (
    box_to_pixels,
    read_detections,
    read_label_map,
    read_proposals,
    write_proposals,
)
from vidray.data.decode import iter_frames, output_size, probe
from vidray.data.synthetic import write_video
from vidray.data.synthetic_ava import ACTIONS, write_ava_dataset
from vidray.detect.persons import COCO_CLASSES, COCO_PERSON
from vidray.detect.render import place_label
from vidray.train.tasks import task_of

REPO = Path(__file__).resolve().parents[1]
DETECTOR_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the small one: fast on CPU
FPS, SHORT_SIDE, WINDOW = 10, 96, 16
SECONDS = 4
OFFSET = 900  # the synthetic videos' frame 0 is annotation second 900, as AVA's cuts
MAX_BOXES = 4


@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava")
    return write_ava_dataset(root, num_videos=2, val_videos=1, duration_sec=SECONDS)


def _save(directory: Path, overrides: list[str], classes: list[str], dataset: dict) -> Path:
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = task_of(cfg).build(cfg, len(classes))
    return save_untrained(directory, model, cfg, classes, dataset=dataset)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained SlowFast action detector, stored as training on the AVA ingest keeps it."""
    return _save(
        tmp_path_factory.mktemp("checkpoint") / "detect",
        [
            "train.task=detect",
            "model.name=slowfast_r50",
            "model.width=8",
            "clip.T=8",
            "clip.stride=1",
        ],
        list(ACTIONS),
        {
            "layout": "ava",
            "class_ids": list(range(1, len(ACTIONS) + 1)),
            "storage": {
                "ingest.fps": FPS,
                "ingest.short_side": SHORT_SIDE,
                "ingest.window_frames": WINDOW,
            },
        },
    )


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """Faster R-CNN weights whose box head scores every proposal a person (p = 0.996) and
    keeps the region proposal's box as it is."""
    torch.manual_seed(0)
    model = get_model(DETECTOR_ARCH, weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    head = model.roi_heads.box_predictor
    with torch.no_grad():
        for layer in (head.cls_score, head.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
        head.cls_score.bias[COCO_PERSON] = 10.0
    path = tmp_path_factory.mktemp("detector") / "coco_persons.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def proposals(ava, tmp_path_factory) -> Path:
    """The person proposals of both splits in one file, as a folder run needs them."""
    merged = {
        key: boxes
        for split in ava.proposals.values()
        for key, boxes in read_proposals(split).keyframes.items()
    }
    return write_proposals(tmp_path_factory.mktemp("proposals") / "proposals.csv", merged)


def detect(video: Path, checkpoint: Path, *args: str) -> int:
    return main(
        [
            "detect",
            "--video",
            str(video),
            "--checkpoint",
            str(checkpoint),
            *args,
            f"detect.time_offset={OFFSET}",
            f"detection.max_boxes={MAX_BOXES}",
        ]
    )


@pytest.fixture(scope="module")
def from_proposals(ava, checkpoint, proposals, tmp_path_factory) -> dict[str, Path]:
    """Per video id: the CSV of a single-video run on the supplied proposals."""
    out = tmp_path_factory.mktemp("single")
    csvs = {}
    for video_id, video in ava.videos.items():
        csvs[video_id] = out / f"{video_id}.csv"
        assert (
            detect(
                video, checkpoint, "--proposals", str(proposals), "--output", str(csvs[video_id])
            )
            == 0
        )
    return csvs


def test_faster_rcnn_persons_are_classified_into_an_ava_csv(ava, checkpoint, detector, tmp_path):
    output = tmp_path / "synth_000.csv"
    video = ava.videos["synth_000"]
    code = detect(
        video,
        checkpoint,
        "--detector",
        str(detector),
        "--output",
        str(output),
        f"detect.detector_arch={DETECTOR_ARCH}",
    )
    assert code == 0
    found = read_detections(output, label_map=read_label_map(ava.label_map))
    assert not found.problems
    assert list(found.keyframes) == [("synth_000", t) for t in ava.keyframe_seconds]
    for rows in found.keyframes.values():
        boxes = {d.box for d in rows}
        assert len(boxes) == MAX_BOXES  # the detector finds more: the strongest are kept
        assert len(rows) == MAX_BOXES * len(ACTIONS)
        assert {d.action_id for d in rows} == set(range(1, len(ACTIONS) + 1))


def test_supplied_proposals_give_a_detection_per_box_and_class(ava, from_proposals):
    supplied = read_proposals(ava.proposals["train"], min_score=0.8).keyframes
    found = read_detections(from_proposals["synth_000"], label_map=read_label_map(ava.label_map))
    assert not found.problems
    assert list(found.keyframes) == [k for k in supplied if k[0] == "synth_000"]
    for key, rows in found.keyframes.items():
        strongest = sorted(supplied[key], key=lambda p: -p.score)[:MAX_BOXES]
        expected = [(p.box, action) for p in strongest for action in range(1, 7)]
        assert [(d.box, d.action_id) for d in rows] == expected


@pytest.mark.parametrize("short_side", [0, 144])
def test_render_draws_the_boxes_on_the_second_around_each_keyframe(
    ava, checkpoint, proposals, tmp_path, short_side
):
    """At the source's size and rate (the model saw 96 px at 10 fps), or at a short side
    the user asks for."""
    video = ava.videos["synth_000"]
    rendered = tmp_path / "drawn.mp4"
    csv = tmp_path / "found.csv"
    args = ["--proposals", str(proposals), "--render", str(rendered), "--output", str(csv)]
    assert detect(video, checkpoint, *args, f"detect.render_short_side={short_side}") == 0
    with av.open(str(rendered)) as container:
        drawn = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    source_fps = probe(video).fps
    source = list(iter_frames(video, fps=source_fps, short_side=short_side))
    width, height = output_size(*ava.size, short_side)
    assert (width, height) == (ava.size if short_side == 0 else (192, 144))
    assert len(drawn) == len(source) == round(SECONDS * source_fps)
    assert drawn[0].shape == (height, width, 3)

    def difference(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(int) - b.astype(int)).mean())

    # No keyframe within half a second of the first frames: they are the video itself.
    assert difference(drawn[0], source[0]) < 6
    first = read_detections(csv).keyframes[("synth_000", OFFSET + 1)][0].box
    x1, y1, _, y2 = (round(v) for v in box_to_pixels(first, width, height))
    second = round(source_fps)
    for frame in (second - second // 2, second, second + second // 2 - 1):  # around keyframe 1
        edge = np.s_[y1 + 4 : y2 - 4, x1]  # the left edge, below the action labels
        assert difference(drawn[frame][edge], source[frame][edge]) > 30
    assert difference(drawn[second // 2 - 1], source[second // 2 - 1]) < 6  # before that second


def test_labels_of_boxes_that_touch_do_not_cover_each_other():
    """Three people side by side: boxes with the same top edge, labels wider than a box."""
    placed: list = []
    for box in [(10, 40, 50, 120), (45, 40, 85, 120), (80, 40, 120, 120)]:
        x, y = place_label((60, 30), box, placed, frame_height=200, gap=2)
        assert x == box[0]
        rect = (x, y, x + 60, y + 30)
        for other in placed:
            assert (
                rect[2] <= other[0]
                or other[2] <= rect[0]
                or rect[3] <= other[1]
                or (other[3] <= rect[1])
            ), (rect, other)
        placed.append(rect)
    assert placed[0][1] == 10  # the first sits right above its box
    # A label never leaves the frame, even when the ones above push it down.
    assert place_label((60, 30), (0, 190, 50, 200), placed, frame_height=200, gap=2)[1] <= 170


def test_a_folder_is_a_ray_job_with_one_csv_per_video(
    ray_local, ava, checkpoint, proposals, from_proposals, tmp_path, capsys
):
    folder = tmp_path / "videos"
    folder.mkdir()
    for video in ava.videos.values():
        (folder / video.name).symlink_to(video)
    (folder / "broken.mp4").write_text("not a video")
    output = tmp_path / "found"
    assert detect(folder, checkpoint, "--proposals", str(proposals), "--output", str(output)) == 0

    combined = {}
    for video_id, single in from_proposals.items():
        ours = read_detections(output / f"{video_id}_detections.csv").keyframes
        theirs = read_detections(single).keyframes
        assert list(ours) == list(theirs)
        for key in ours:
            assert [(d.box, d.action_id) for d in ours[key]] == [
                (d.box, d.action_id) for d in theirs[key]
            ]
            np.testing.assert_allclose(
                [d.score for d in ours[key]], [d.score for d in theirs[key]], atol=1e-5
            )
        combined.update(ours)
    assert read_detections(output / "detections.csv").keyframes == combined
    assert not (output / "broken_detections.csv").exists()  # skipped, and reported once:
    (skipped,) = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert skipped.count("broken.mp4") == 1, skipped


def test_bad_inputs_are_one_line_errors(ava, checkpoint, detector, proposals, tmp_path, capsys):
    classifier = _save(
        tmp_path / "classify", ["model.name=simple3d", "model.width=8"], ["a", "b"], {}
    )
    not_weights = tmp_path / "weights.pt"
    not_weights.write_text("not a state_dict")
    short = write_video(
        tmp_path / "short.mp4", np.zeros((15, 96, 128, 3), np.uint8), fps=FPS
    )  # 1.5 s: no whole second has a second of video on both sides
    video = ava.videos["synth_000"]
    cases = [
        ((tmp_path / "missing.mp4", checkpoint, "--proposals", str(proposals)), "no such file"),
        ((video, classifier, "--proposals", str(proposals)), "'classify' checkpoint"),
        ((video, checkpoint, "--detector", str(not_weights)), "not a state_dict"),
        ((video, checkpoint, "--detector", str(detector)), "does not fit"),
        ((video, checkpoint), "--detector FILE"),
        ((short, checkpoint, "--proposals", str(proposals)), "shorter than 2 s"),
        (
            (ava.videos["synth_001"], checkpoint, "--proposals", str(ava.proposals["train"])),
            "no proposals for video 'synth_001'",
        ),
    ]
    for args, message in cases:
        assert detect(*args) == 2
        err = own_lines(capsys.readouterr().err)
        assert len(err) == 1 and message in err[0], err


@pytest.mark.slow  # a subprocess
def test_the_command_line_reports_an_error_without_a_traceback(checkpoint, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.detect",
            "--video",
            str(tmp_path / "missing.mp4"),
            "--checkpoint",
            str(checkpoint),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("python -m pipelines.detect: error: ")
    assert "no such file or folder" in result.stderr and "Traceback" not in result.stderr
