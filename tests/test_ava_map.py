"""`vidray ava-map` as a user types it: ActivityNet's inputs (label map, ground truth,
detections, exclusions) by relative path, a frame-mAP worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidray.cli import main
from vidray.data.ava_files import read_detections, write_detections

# The 2019 challenge's label map form (item { name id }); class 12 has no ground truth.
LABEL_MAP = """\
item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
item {
  name: "stand"
  id: 12
}
item {
  name: "answer phone"
  id: 80
}
"""

# A = (0.1, 0.1, 0.4, 0.9), B = (0.5, 0.2, 0.9, 0.8); 0903 is an empty keyframe
# (the 2020 form's 2-column row); 0904's class-80 box reaches outside [0, 1]; class
# 9 is not in the label map; 0905 is excluded.
GROUND_TRUTH = """\
vid,0902,0.1,0.1,0.4,0.9,1,0
vid,0902,0.1,0.1,0.4,0.9,3,0
vid,0902,0.1,0.1,0.4,0.9,3,0
vid,0902,0.5,0.2,0.9,0.8,1,1
vid,0903
vid,0904,-0.05,0.1,0.4,1.05,80,2
vid,0904,0.1,0.1,0.4,0.9,9,2
vid,0905,0.1,0.1,0.4,0.9,1,0
"""

DETECTIONS = """\
vid,0902,0.1,0.1,0.4,0.9,1,0.9
vid,0902,0.5,0.2,0.9,0.8,1,0.6
vid,0903,0.5,0.2,0.9,0.8,1,0.6
vid,0902,0.1,0.1,0.4,0.9,3,0.8
vid,0902,0.3,0.3,0.3,0.6,3,0.95
vid,0904,-0.05,0.1,0.4,1.05,80,0.7
vid,0905,0.1,0.1,0.4,0.9,1,0.99
vid,0906,0.5,0.2,0.9,0.8,1,0.99
vid,0904,0.1,0.1,0.4,0.9,9,0.99
"""

# Class 1: 2 instances (0905 excluded). Per keyframe in the detections' order: 0902
# gives TP .9 (A), TP .6 (B); 0903 (no box) FP .6; 0906 is no ground-truth keyframe
# (ignored). Scores [.9, .6, .6] ranked by argsort[::-1]: the later .6 first ->
# TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP 1/2 + 1/2 * 2/3 = 5/6.
# Class 3: the repeated row is 2 instances; the zero-area .95 is removed; TP .8 ->
# AP 1/2. Class 80: its box outside [0, 1] is kept and found -> AP 1. Class 12: no
# ground truth, not averaged. mAP = (5/6 + 1/2 + 1) / 3 = 7/9.
EXPECTED = {1: 5 / 6, 3: 0.5, 80: 1.0}

# Without the exclusions 0905 counts: class 1 has 3 instances and 0905's TP (.99)
# ranks first: TP, TP, FP, TP -> precision 1, 1, 2/3, 3/4 at recall 1/3, 2/3, 2/3, 1
# -> AP 1/3 + 1/3 + 1/3 * 3/4 = 11/12; mAP = (11/12 + 1/2 + 1) / 3 = 29/36.
EXPECTED_WITHOUT_EXCLUSIONS = {1: 11 / 12, 3: 0.5, 80: 1.0}


@pytest.fixture
def inputs(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("ava_action_list_v2.2_for_activitynet_2019.pbtxt").write_text(LABEL_MAP)
    Path("ava_val_v2.2.csv").write_text(GROUND_TRUTH)
    Path("detections.csv").write_text(DETECTIONS)
    Path("ava_val_excluded_timestamps_v2.2.csv").write_text("vid,0905\n")
    return tmp_path


def ava_map(*extra: str) -> list[str]:
    return [
        "ava-map",
        "--labelmap",
        "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
        "--groundtruth",
        "ava_val_v2.2.csv",
        "--detections",
        "detections.csv",
        *extra,
    ]


def test_ava_map_prints_and_writes_the_hand_worked_frame_map(inputs, capsys):
    argv = ava_map("--exclusions", "ava_val_excluded_timestamps_v2.2.csv", "--json", "out/map.json")
    for _ in range(2):  # twice into the same output: the same file
        assert main(argv) == 0
        written = json.loads(Path("out/map.json").read_text())
        assert written["mAP"] == pytest.approx(7 / 9)
        assert {int(k): v for k, v in written["per_class"].items()} == pytest.approx(EXPECTED)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("frame-mAP@0.5IOU: 0.777778 (mean AP of the 3 classes")
    assert lines[1:5] == [
        "     1  0.833333  bend/bow (at the waist)",
        "     3  0.500000  crouch/kneel",
        "    12         -  stand (no ground truth: not averaged)",
        "    80  1.000000  answer phone",
    ]


def test_ava_map_without_exclusions_scores_the_excluded_keyframe(inputs, capsys):
    assert main([*ava_map("--json", "map.json")]) == 0
    written = json.loads(Path("map.json").read_text())
    assert written["mAP"] == pytest.approx(29 / 36)
    assert {int(k): v for k, v in written["per_class"].items()} == pytest.approx(
        EXPECTED_WITHOUT_EXCLUSIONS
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda: Path("detections.csv").unlink(), "cannot read detections.csv"),
        (
            lambda: Path("ava_val_v2.2.csv").write_text(GROUND_TRUTH + "vid,0907,0.1,0.2\n"),
            "ava_val_v2.2.csv:9: expected 2, 7 or 8 columns",
        ),
        (
            lambda: Path("ava_action_list_v2.2_for_activitynet_2019.pbtxt").write_text(
                "item {\n  name: 'x'\n"
            ),
            "ava_action_list_v2.2_for_activitynet_2019.pbtxt:1: 'item {' is never closed",
        ),
    ],
)
def test_ava_map_input_mistakes_are_one_line_errors(inputs, capsys, change, message):
    change()
    assert main(ava_map()) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"vidray ava-map: error: {message}")
    assert out.err.count("\n") == 1 and "Traceback" not in out.err


def test_the_csv_vidray_detect_writes_scores_the_same(inputs, capsys):
    # `vidray detect` writes its CSV with write_detections: the same rows, as ava-map
    # (and ActivityNet's script, which reads what ava-map reads) take them.
    write_detections("from_detect.csv", read_detections("detections.csv").keyframes)
    argv = [*ava_map("--json", "map.json"), "-e", "ava_val_excluded_timestamps_v2.2.csv"]
    argv[argv.index("detections.csv")] = "from_detect.csv"
    assert main(argv) == 0
    assert json.loads(Path("map.json").read_text())["mAP"] == pytest.approx(7 / 9)
