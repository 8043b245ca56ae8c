"""The AVA file readers and writers, the coordinate and time conversions, and the
synthetic AVA-like dataset read back through them."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import av
import numpy as np
import pytest

from vidray.data.ava import list_ava
from vidray.data.ava_files import (
    AVA_KEYFRAME_SECONDS,
    AVA_TIME_OFFSET,
    Box,
    Detection,
    Label,
    LabeledBox,
    LabelMap,
    ScoredBox,
    box_from_pixels,
    box_to_pixels,
    frame_to_seconds,
    keyframe_to_frame,
    read_annotations,
    read_detections,
    read_excluded,
    read_ground_truth,
    read_label_map,
    read_proposals,
    write_annotations,
    write_detections,
    write_excluded,
    write_label_map,
    write_proposals,
)
from vidray.data.synthetic_ava import ACTIONS, write_ava_dataset
from vidray.errors import VidrayError

# As in ava_action_list_v2.2.pbtxt.
LABEL_FORM = """\
label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "crouch/kneel"
  label_id: 3
  label_type: PERSON_MOVEMENT
}
label {
  name: "answer phone"
  label_id: 80
  label_type: OBJECT_MANIPULATION
}
"""

# As in ava_action_list_v2.2_for_activitynet_2019.pbtxt, plus what TF label maps allow.
ITEM_FORM = """\
# the evaluation subset
item {
  name: "bend/bow (at the waist)"
  id: 1
}
item { name: "crouch/kneel" id: 3 display_name: "crouch or kneel" }
item: {
  name: 'say "hi"'; id: 12,
  keypoints { id: 0 label: "nose" }
}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(VidrayError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- annotations


def test_annotation_rows_of_one_person_group_into_one_multilabel_box(tmp_path):
    path = write(
        tmp_path,
        "ava_val_v2.2.csv",
        "vid_b,0903,0.1,0.2,0.3,0.4,12,0\n"
        "vid_a,0902,0.077,0.151,0.283,0.811,80,1\n"
        "vid_a,0902,0.077,0.151,0.283,0.811,9,1\n"
        "\n"
        "vid_a,0902,0.332,0.194,0.481,0.891,9,0\n"
        "vid_a,0902,0.077,0.151,0.283,0.811,9,1\n",  # a repeated row adds nothing
    )
    annotations = read_annotations(path)
    assert list(annotations.keyframes) == [("vid_a", 902), ("vid_b", 903)]
    assert annotations.keyframes[("vid_a", 902)] == [
        LabeledBox(Box(0.077, 0.151, 0.283, 0.811), (9, 80), 1),
        LabeledBox(Box(0.332, 0.194, 0.481, 0.891), (9,), 0),
    ]
    assert annotations.keyframes[("vid_b", 903)] == [LabeledBox(Box(0.1, 0.2, 0.3, 0.4), (12,), 0)]
    assert annotations.problems == []


def test_annotations_without_person_id_column_get_person_minus_one(tmp_path):
    path = write(tmp_path, "a.csv", "v,902,0.1,0.2,0.3,0.4,5\nv,902,0.1,0.2,0.3,0.4,6\n")
    assert read_annotations(path).keyframes == {
        ("v", 902): [LabeledBox(Box(0.1, 0.2, 0.3, 0.4), (5, 6), -1)]
    }


def test_box_outside_unit_square_is_reported_not_clipped(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        "v,902,0.1,0.2,0.3,0.4,1,0\n"
        "v,902,0.5,0.2,1.2,0.4,1,1\n"
        "v,903,-0.01,0.2,0.3,0.4,1,0\n"
        "v,903,0.6,0.2,0.3,0.4,1,2\n"  # x2 < x1
        "v,904,0.1,0.4,0.3,0.4,1,0\n",  # y1 == y2: empty
    )
    annotations = read_annotations(path)
    assert annotations.keyframes == {("v", 902): [LabeledBox(Box(0.1, 0.2, 0.3, 0.4), (1,), 0)]}
    assert [(p.line, p.path) for p in annotations.problems] == [(2, str(path))] + [
        (line, str(path)) for line in (3, 4, 5)
    ]
    assert str(annotations.problems[0]) == f"{path}:2: box (0.5, 0.2, 1.2, 0.4) is outside [0, 1]"
    assert "inverted" in annotations.problems[2].reason
    assert "empty" in annotations.problems[3].reason


def test_action_id_not_in_label_map_is_reported(tmp_path):
    label_map = read_label_map(write(tmp_path, "map.pbtxt", LABEL_FORM))
    path = write(tmp_path, "a.csv", "v,902,0.1,0.2,0.3,0.4,1,0\nv,902,0.1,0.2,0.3,0.4,2,0\n")
    annotations = read_annotations(path, label_map=label_map)
    assert annotations.keyframes == {("v", 902): [LabeledBox(Box(0.1, 0.2, 0.3, 0.4), (1,), 0)]}
    assert [str(p) for p in annotations.problems] == [
        f"{path}:2: action id 2 is not in the label map"
    ]


def test_excluded_keyframes_are_read_and_dropped_from_annotations(tmp_path):
    excluded = read_excluded(write(tmp_path, "ex.csv", "v,0903\nw,902\n\nv,0903\n"))
    assert excluded == frozenset({("v", 903), ("w", 902)})
    path = write(
        tmp_path,
        "a.csv",
        "v,902,0.1,0.2,0.3,0.4,1,0\n"
        "v,903,0.1,0.2,0.3,0.4,1,0\n"
        "v,903,0.1,0.2,1.3,0.4,1,1\n",  # bad, but excluded: not a problem either
    )
    annotations = read_annotations(path, excluded=excluded)
    assert list(annotations.keyframes) == [("v", 902)]
    assert annotations.problems == []


@pytest.mark.parametrize(
    ("reader", "text", "line", "reason"),
    [
        (read_annotations, "v,902,0.1,0.2,0.3,0.4,1,0\nv,902,0.1,0.2,0.3\n", 2, "got 5"),
        (read_annotations, "v,902,0.1,0.2,0.3,0.4,1,0,7,7\n", 1, "got 10"),
        (read_annotations, "v,902,0.1,abc,0.3,0.4,1,0\n", 1, "y1 'abc' is not a finite number"),
        (read_annotations, "v,902,0.1,0.2,0.3,nan,1,0\n", 1, "y2 'nan' is not a finite number"),
        (read_annotations, "v,90a,0.1,0.2,0.3,0.4,1,0\n", 1, "timestamp '90a' is not a whole"),
        (read_annotations, "v,902.5,0.1,0.2,0.3,0.4,1,0\n", 1, "timestamp '902.5' is not"),
        (read_annotations, "v,902,0.1,0.2,0.3,0.4,x,0\n", 1, "action_id 'x' is not a whole"),
        (read_annotations, "v,902,0.1,0.2,0.3,0.4,1,p\n", 1, "person_id 'p' is not a whole"),
        (read_annotations, ",902,0.1,0.2,0.3,0.4,1,0\n", 1, "empty video_id"),
        (read_excluded, "v,902\nv\n", 2, "expected 2 columns"),
        (read_excluded, "v,902,1\n", 1, "expected 2 columns"),
        (read_proposals, "v,902,0.1,0.2,0.3,0.4\n", 1, "expected 2, 7 or 8 columns"),
        (read_proposals, "v,902,0.1,0.2,0.3,0.4,,high\n", 1, "score 'high' is not"),
        (read_detections, "v,902,0.1,0.2,0.3,0.4\n", 1, "expected 2, 7 or 8 columns"),
        (read_detections, "v,902,0.1,0.2,0.3,0.4,1,0.9,0\n", 1, "got 9"),
        (read_detections, "v,902,0.1,0.2,0.3,0.4,1,high\n", 1, "score 'high' is not"),
        (read_ground_truth, "v,902,0.1,0.2,0.3,0.4,1,0\nv\n", 2, "expected 2, 7 or 8 columns"),
        (
            read_ground_truth,
            "v,902,0.1,0.4,0.3,0.2,1,0\n",
            1,
            "box (0.1, 0.4, 0.3, 0.2) is inverted",
        ),
    ],
)
def test_malformed_csv_line_is_a_one_line_error_naming_file_and_line(
    tmp_path, reader, text, line, reason
):
    path = write(tmp_path, "bad.csv", text)
    message = error_of(reader, path)
    assert message.startswith(f"{path}:{line}: ")
    assert reason in message


def test_missing_file_is_a_one_line_error(tmp_path):
    assert str(tmp_path / "nope.csv") in error_of(read_annotations, tmp_path / "nope.csv")
    assert str(tmp_path / "nope.pbtxt") in error_of(read_label_map, tmp_path / "nope.pbtxt")


def test_annotations_round_trip_through_the_writer(tmp_path):
    keyframes = {
        ("a", 902): [
            LabeledBox(Box(0.077, 0.151, 0.283, 0.811), (9, 80), 1),
            LabeledBox(Box(0.5, 0.0, 1.0, 1.0), (3,), 0),
        ],
        ("b", 1798): [LabeledBox(Box(0.25, 0.25, 0.75, 0.75), (1,), 4)],
    }
    path = write_annotations(tmp_path / "gt.csv", keyframes)
    assert path.read_text().splitlines()[0] == "a,0902,0.077,0.151,0.283,0.811,9,1"
    assert read_annotations(path).keyframes == keyframes
    excluded = {("a", 903), ("b", 1000)}
    assert read_excluded(write_excluded(tmp_path / "ex.csv", excluded)) == excluded


def test_ground_truth_for_scoring_keeps_every_row_as_written(tmp_path):
    # The official evaluator's reading: a repeated row is a second instance, a box
    # outside [0, 1] stays, a 2-column row (the 2020 form) is a keyframe with no box;
    # file order. Ingest's reading groups, drops the empty keyframe and reports the box.
    path = write(
        tmp_path,
        "gt.csv",
        "v,0903,0.1,0.2,0.3,0.4,5,0\n"
        "v,0903,0.1,0.2,0.3,0.4,5,0\n"
        "v,0902\n"
        "v,0904,-0.1,0.2,1.3,0.4,7\n",
    )
    assert read_ground_truth(path).keyframes == {
        ("v", 903): [LabeledBox(Box(0.1, 0.2, 0.3, 0.4), (5,), 0)] * 2,
        ("v", 902): [],
        ("v", 904): [LabeledBox(Box(-0.1, 0.2, 1.3, 0.4), (7,), -1)],
    }
    annotations = read_annotations(path)
    assert annotations.keyframes == {("v", 903): [LabeledBox(Box(0.1, 0.2, 0.3, 0.4), (5,), 0)]}
    assert [p.line for p in annotations.problems] == [4]


# ---------------------------------------------------------------- proposals, detections


def test_proposals_read_in_seven_and_eight_column_forms(tmp_path):
    path = write(
        tmp_path,
        "boxes.csv",
        "v,0902,0.1,0.2,0.3,0.4,0.95\n"  # video_id, timestamp, box, score
        "v,0902,0.5,0.2,0.9,0.8,,0.30\n"  # SlowFast: empty action_id column, then score
        "v,0903,0.5,0.2,0.9,0.8,-1,0.05\n"
        "v,0903,0.5,0.2,1.9,0.8,-1,0.99\n"
        "v,0904\n",  # the 2020 form's keyframe with no box: nothing to propose
    )
    proposals = read_proposals(path)
    assert proposals.keyframes == {
        ("v", 902): [
            ScoredBox(Box(0.1, 0.2, 0.3, 0.4), 0.95),
            ScoredBox(Box(0.5, 0.2, 0.9, 0.8), 0.3),
        ],
        ("v", 903): [ScoredBox(Box(0.5, 0.2, 0.9, 0.8), 0.05)],
    }
    assert [p.line for p in proposals.problems] == [4]
    assert list(read_proposals(path, min_score=0.2).keyframes) == [("v", 902)]
    again = read_proposals(write_proposals(tmp_path / "again.csv", proposals.keyframes))
    assert again.keyframes == proposals.keyframes


def test_detections_round_trip_and_report_unknown_actions(tmp_path):
    label_map = LabelMap((Label(1, "a"), Label(2, "b")))
    keyframes = {
        ("v", 902): [
            Detection(Box(0.1, 0.2, 0.3, 0.4), 1, 0.875),
            Detection(Box(0.1, 0.2, 0.3, 0.4), 2, 0.125),
        ],
        ("w", 1000): [Detection(Box(0.0, 0.0, 1.0, 1.0), 7, 0.5)],
    }
    path = write_detections(tmp_path / "det.csv", keyframes)
    assert read_detections(path).keyframes == keyframes
    checked = read_detections(path, label_map=label_map)
    assert checked.keyframes == {("v", 902): keyframes[("v", 902)]}
    assert [str(p) for p in checked.problems] == [f"{path}:3: action id 7 is not in the label map"]


def test_detections_read_as_the_official_evaluator_reads_them(tmp_path):
    # Boxes as written (outside [0, 1], empty), 7 columns mean score 1, a 2-column row
    # adds nothing; keyframes in the order of their first kept row (action 9 is not
    # in the label map: w's first row is its second).
    label_map = LabelMap((Label(1, "a"),))
    path = write(
        tmp_path,
        "det.csv",
        "w,0902,0.1,0.2,0.3,0.4,9,0.5\n"
        "v,0902,-0.5,0.2,1.5,0.4,1,0.25\n"
        "v,0903\n"
        "w,0902,0.3,0.2,0.3,0.4,1\n",
    )
    found = read_detections(path, label_map=label_map)
    assert list(found.keyframes.items()) == [
        (("v", 902), [Detection(Box(-0.5, 0.2, 1.5, 0.4), 1, 0.25)]),
        (("w", 902), [Detection(Box(0.3, 0.2, 0.3, 0.4), 1, 1.0)]),
    ]
    assert [p.line for p in found.problems] == [1]


def test_dense_proposals_pickle_reads_like_the_csv(tmp_path):
    # FAIR's ava_dense_proposals_{split}.FAIR.recall_93.9.pkl: "video_id,%04d" ->
    # (N, 5) normalised x1, y1, x2, y2, score.
    entries = {
        "v,0903": np.array([[0.5, 0.2, 0.9, 0.8, 0.3], [0.5, 0.2, 1.9, 0.8, 0.99]]),
        "v,0902": np.array([[0.1, 0.2, 0.3, 0.4, 0.95]], np.float32),
    }
    path = tmp_path / "ava_dense_proposals_val.FAIR.recall_93.9.pkl"
    path.write_bytes(pickle.dumps(entries, protocol=2))
    proposals = read_proposals(path)
    assert proposals.keyframes == {
        ("v", 902): [ScoredBox(Box(*np.float32([0.1, 0.2, 0.3, 0.4]).tolist()), 0.949999988079071)],
        ("v", 903): [ScoredBox(Box(0.5, 0.2, 0.9, 0.8), 0.3)],
    }
    assert [str(p) for p in proposals.problems] == [
        f"{path}: entry 'v,0903': box (0.5, 0.2, 1.9, 0.8) is outside [0, 1]"
    ]
    assert list(read_proposals(path, min_score=0.5).keyframes) == [("v", 902)]


def test_ava_layout_takes_fair_dense_proposals_when_there_is_no_csv(tmp_path):
    notes, videos = tmp_path / "annotations", tmp_path / "videos"
    videos.mkdir()
    (videos / "v.mp4").write_bytes(b"")  # listing only: nothing decodes it
    notes.mkdir()
    write(notes, "ava_action_list_v2.2.pbtxt", LABEL_FORM)
    write(notes, "ava_val_v2.2.csv", "v,0902,0.1,0.2,0.3,0.4,1,0\n")
    dense = {"v,0903": np.array([[0.5, 0.25, 0.75, 0.5, 0.875]])}
    (notes / "ava_dense_proposals_val.FAIR.recall_93.9.pkl").write_bytes(pickle.dumps(dense))
    rows, _, _ = list_ava(str(tmp_path))
    frames = {f["sec"]: f for f in json.loads(rows[0]["keyframes"])}
    assert frames[903]["proposals"] == [[0.5, 0.25, 0.75, 0.5]]
    assert frames[903]["scores"] == [0.875]
    assert frames[902]["boxes"] == [[0.1, 0.2, 0.3, 0.4]]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a pickle", "not a readable pickle"),
        (pickle.dumps([1, 2]), "expected a dict from 'video_id,timestamp'"),
        (pickle.dumps({"v0902": np.zeros((1, 5))}), "key 'v0902' is not 'video_id,timestamp'"),
        (pickle.dumps({"v,0902": np.zeros((1, 3))}), "got shape (1, 3)"),
    ],
)
def test_unreadable_proposals_pickle_is_a_one_line_error(tmp_path, content, reason):
    path = tmp_path / "proposals.pkl"
    path.write_bytes(content)
    assert reason in error_of(read_proposals, path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_proposals_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "ava_dense_proposals_val.FAIR.recall_93.9.pkl"
    path.write_bytes(pickle.dumps({"v,0902": _RunsCode(marker)}, protocol=2))
    assert re.search(r"it asks for \S+, refused", error_of(read_proposals, path))
    assert not marker.exists()


# ---------------------------------------------------------------- label maps


def test_label_map_reads_label_form(tmp_path):
    label_map = read_label_map(write(tmp_path, "ava_action_list_v2.2.pbtxt", LABEL_FORM))
    assert label_map.labels == (
        Label(1, "bend/bow (at the waist)", "PERSON_MOVEMENT"),
        Label(3, "crouch/kneel", "PERSON_MOVEMENT"),
        Label(80, "answer phone", "OBJECT_MANIPULATION"),
    )
    assert label_map.ids == (1, 3, 80)
    assert [label_map.index(i) for i in (1, 3, 80)] == [0, 1, 2]
    assert 3 in label_map and 2 not in label_map and len(label_map) == 3
    assert label_map.name(80) == "answer phone"


def test_label_map_reads_item_form_with_display_names_and_comments(tmp_path):
    label_map = read_label_map(write(tmp_path, "for_activitynet_2019.pbtxt", ITEM_FORM))
    assert label_map.labels == (
        Label(1, "bend/bow (at the waist)"),
        Label(3, "crouch/kneel", display_name="crouch or kneel"),
        Label(12, 'say "hi"'),
    )
    assert label_map.name(3) == "crouch or kneel"


@pytest.mark.parametrize("form", ["label", "item"])
def test_label_map_round_trips_in_both_forms(tmp_path, form):
    labels = LabelMap(
        (Label(2, 'a "quoted" \\ name', "PERSON_MOVEMENT", "shown"), Label(1, "b", "X", "y"))
    )
    again = read_label_map(write_label_map(tmp_path / "m.pbtxt", labels, form=form))
    assert [(label.id, label.name) for label in again] == [(2, 'a "quoted" \\ name'), (1, "b")]
    assert again.ids == (1, 2)
    if form == "label":
        assert again.labels[0].label_type == "PERSON_MOVEMENT"
    else:
        assert again.name(2) == "shown"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('label {\n  name: "a"\n}\n', 1, "has no label_id"),
        ('label {\n  name: "a"\n  label_id: one\n}\n', 3, "id 'one' is not a whole number"),
        ('item { name: "a" id: 1 }\nitem {\n name: "b" id: 1 }\n', 2, "already used on line 1"),
        ("item { id: 4 }\n", 1, "has no name"),
        ('label { name: "a" label_id: 1 }\nlabels { }\n', 2, "expected 'label {' or 'item {'"),
        ('label { name: "a" label_id: 1\n', 1, "never closed"),
        ('label { name: "a" label_id: 1 }\n\nlabel { name "b" }\n', 3, "expected ':' after 'name'"),
        ('label { name: "a\n" label_id: 1 }\n', 1, "unexpected character"),
        ("# nothing\n", None, "no label entries"),
    ],
)
def test_malformed_label_map_is_a_one_line_error_naming_the_line(tmp_path, text, line, reason):
    path = write(tmp_path, "map.pbtxt", text)
    message = error_of(read_label_map, path)
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: ")
    assert reason in message


# ---------------------------------------------------------------- conversions


@pytest.mark.parametrize(("width", "height"), [(160, 120), (341, 256), (1920, 1080)])
def test_normalised_and_pixel_boxes_round_trip(width, height):
    assert box_to_pixels(Box(0, 0, 1, 1), width, height) == (0, 0, width, height)
    assert box_to_pixels(Box(0.25, 0.5, 0.75, 1.0), 160, 120) == (40, 60, 120, 120)
    rng = np.random.default_rng(0)
    for _ in range(100):
        x1, x2 = sorted(rng.uniform(0, 1, 2))
        y1, y2 = sorted(rng.uniform(0, 1, 2))
        box = Box(x1, y1, x2, y2)
        again = box_from_pixels(box_to_pixels(box, width, height), width, height)
        assert np.allclose(again, box, rtol=0, atol=1e-12)
        pixels = tuple(rng.integers(0, min(width, height), 4).astype(float))
        assert np.allclose(
            box_to_pixels(box_from_pixels(pixels, width, height), width, height), pixels, atol=1e-9
        )


def test_keyframe_seconds_and_frames_convert_both_ways():
    # AVA: the 15-minute cut starts at second 900, keyframes 902..1798.
    assert AVA_KEYFRAME_SECONDS[0] == 902 and AVA_KEYFRAME_SECONDS[-1] == 1798
    assert keyframe_to_frame(902, fps=30, time_offset=AVA_TIME_OFFSET) == 60
    assert keyframe_to_frame(1798, fps=30, time_offset=AVA_TIME_OFFSET) == 26940
    assert keyframe_to_frame(902, fps=30) == 27060  # a full movie: time 0 is frame 0
    assert keyframe_to_frame(902, fps=29.97, time_offset=900) == 60  # 59.94 -> nearest
    for fps in (10, 25, 29.97, 30):
        for second in (900, 902, 1000, 1798):
            frame = keyframe_to_frame(second, fps=fps, time_offset=900)
            assert abs(frame_to_seconds(frame, fps=fps, time_offset=900) - second) <= 0.5 / fps
    assert frame_to_seconds(60, fps=30, time_offset=900) == 902
    assert "time offset" in error_of(keyframe_to_frame, 899, fps=30, time_offset=900)


# ---------------------------------------------------------------- synthetic dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_ava_dataset(tmp_path_factory.mktemp("ava") / "data", seed=3)


def test_synthetic_files_parse_without_problems(synthetic):
    label_map = read_label_map(synthetic.label_map)
    eval_map = read_label_map(synthetic.eval_label_map)
    assert [label.name for label in label_map] == list(ACTIONS)
    assert eval_map.ids == label_map.ids == (1, 2, 3, 4, 5, 6)
    seen_actions: set[int] = set()
    for split, videos in synthetic.splits.items():
        excluded = read_excluded(synthetic.excluded[split])
        truth = read_annotations(synthetic.annotations[split], label_map=label_map)
        proposals = read_proposals(synthetic.proposals[split])
        assert truth.problems == [] and proposals.problems == []
        every_key = {(v, t) for v in videos for t in synthetic.keyframe_seconds}
        # Excluded keyframes are left out of the ground truth, but have proposals.
        assert excluded and excluded < every_key
        assert set(truth.keyframes) == every_key - excluded
        assert set(proposals.keyframes) == every_key
        for key, people in truth.keyframes.items():
            assert 2 <= len(people) <= 3
            assert sorted(p.person_id for p in people) == list(range(len(people)))
            # every actor has a proposal that overlaps it well, scored above the false ones
            assert len(proposals.keyframes[key]) >= len(people)
            seen_actions.update(a for p in people for a in p.action_ids)
    assert seen_actions == set(label_map.ids)
    assert synthetic.keyframe_seconds == tuple(range(901, 910))
    assert synthetic.time_offset == AVA_TIME_OFFSET


def test_synthetic_actors_are_multilabel(synthetic):
    truth = read_annotations(synthetic.annotations["train"])
    counts = [len(p.action_ids) for people in truth.keyframes.values() for p in people]
    assert min(counts) >= 1 and max(counts) >= 2
    for people in truth.keyframes.values():
        for person in people:
            # left/right and up/down exclude each other
            assert not {1, 2} <= set(person.action_ids)
            assert not {3, 4} <= set(person.action_ids)


def test_synthetic_videos_decode_to_stated_frames_and_boxes_sit_on_actors(synthetic):
    width, height = synthetic.size
    truth = read_annotations(synthetic.annotations["val"])
    dark_borders = total = 0
    for video_id in synthetic.splits["val"]:
        with av.open(str(synthetic.videos[video_id])) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == synthetic.num_frames == 100
        assert frames[0].shape == (height, width, 3)
        for (vid, second), people in truth.keyframes.items():
            if vid != video_id:
                continue
            frame = frames[keyframe_to_frame(second, fps=synthetic.fps, time_offset=900)]
            for person in people:
                x1, y1, x2, y2 = (round(v) for v in box_to_pixels(person.box, width, height))
                # actors have a dark one-pixel outline on their box's edge
                ring = np.concatenate([frame[y1, x1:x2], frame[y2 - 1, x1:x2], frame[y1:y2, x1]])
                dark_borders += int(ring.mean() < 70)
                total += 1
    assert total > 0 and dark_borders / total >= 0.9


def test_synthetic_dataset_is_deterministic(tmp_path):
    a = write_ava_dataset(tmp_path / "a", num_videos=2, val_videos=1, duration_sec=3, seed=7)
    b = write_ava_dataset(tmp_path / "b", num_videos=2, val_videos=1, duration_sec=3, seed=7)
    c = write_ava_dataset(tmp_path / "c", num_videos=2, val_videos=1, duration_sec=3, seed=8)
    for name in ("annotations", "proposals", "excluded"):
        for split in ("train", "val"):
            assert getattr(a, name)[split].read_bytes() == getattr(b, name)[split].read_bytes()
    assert a.annotations["train"].read_bytes() != c.annotations["train"].read_bytes()
    assert math.isclose(a.fps, 10.0)
