"""Layout ``ava``: one row per keyframe, centred on it, with its boxes and actions.

Keyframe windows are checked frame by frame on index videos (each frame shows
its own number); the whole ingest runs on the synthetic AVA-like dataset and
is read back against the annotation files with the AVA parsers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from media import frame_index, make_video

from vidray.config import load_config
from vidray.data.ava_files import read_annotations, read_excluded, read_label_map
from vidray.data.decode import iter_frames, iter_keyframe_windows
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest
from vidray.data.shards import decode_images
from vidray.data.synthetic_ava import write_ava_dataset
from vidray.errors import VidrayError


def indices(window) -> list[int]:
    return [frame_index(frame) for frame in window.frames]


def test_keyframe_windows_are_centred_and_padded_at_both_ends(tmp_path):
    video = make_video(tmp_path / "v.mp4", num_frames=30, fps=10, size=(64, 48))
    windows = list(
        iter_keyframe_windows(video, centres=[2, 10, 11, 28], fps=10, short_side=0, window_frames=8)
    )
    assert [w.index for w in windows] == [0, 1, 2, 3]
    assert indices(windows[0]) == [0, 0, 0, 1, 2, 3, 4, 5]  # starts at -2: two repeats
    assert (windows[0].padded, windows[0].start_sec) == (2, pytest.approx(-0.2))
    assert indices(windows[1]) == list(range(6, 14)) and windows[1].padded == 0
    assert indices(windows[2]) == list(range(7, 15))  # overlapping windows
    assert indices(windows[3]) == [24, 25, 26, 27, 28, 29, 29, 29] and windows[3].padded == 2
    assert all(w.frames[4].shape == (48, 64, 3) for w in windows)


def test_a_centre_past_the_end_gives_no_window(tmp_path):
    video = make_video(tmp_path / "v.mp4", num_frames=20, fps=10)
    windows = list(
        iter_keyframe_windows(video, centres=[5, 19, 20, 40], fps=10, short_side=0, window_frames=4)
    )
    assert [w.index for w in windows] == [0, 1]


@pytest.fixture(scope="module")
def ava(ray_local, tmp_path_factory):
    """The synthetic dataset, a copy with two bad annotation rows, and both ingested."""
    root = tmp_path_factory.mktemp("ava")
    dataset = write_ava_dataset(root / "src", num_videos=4, val_videos=1, duration_sec=6)
    cfg = load_config(
        None,
        [
            f"ingest.input={dataset.root}",
            "ingest.layout=ava",
            f"ingest.output={root / 'out'}",
            f"ingest.ava_time_offset={dataset.time_offset}",
            "ingest.window_frames=16",
            "ingest.short_side=96",
            "flow.backend=none",
        ],
    )
    summary = run_ingest(cfg, log=lambda line: None)
    return dataset, cfg, summary, root / "out"


def rows(output: Path) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted((output / "windows").glob("*.parquet"))]
    return [row for table in tables for row in table.to_pylist()]


def test_every_annotated_keyframe_is_one_row_with_its_boxes_and_actions(ava):
    dataset, _, summary, output = ava
    assert summary.ingested == 4 and summary.quarantined == 0
    written = {(r["video_id"], r["keyframe_sec"]): r for r in rows(output)}
    expected = {}
    for split in ("train", "val"):
        excluded = read_excluded(dataset.excluded[split])
        truth = read_annotations(dataset.annotations[split], excluded=excluded)
        for key, people in truth.keyframes.items():
            expected[key] = (split, people)
        assert not excluded & written.keys()  # excluded timestamps are not written
    assert set(written) == set(expected)
    for key, (split, people) in expected.items():
        row = written[key]
        assert row["split"] == split and row["label"] == -1
        boxes = np.asarray(row["boxes"]).reshape(-1, 4)
        np.testing.assert_allclose(boxes, [list(p.box) for p in people], atol=1e-6)
        assert row["box_actions"] == [list(p.action_ids) for p in people]
        assert row["person_ids"] == [p.person_id for p in people]
        assert len(row["proposals"]) == 4 * len(row["proposal_scores"]) > 0
        assert row["keyframe_offset"] == 8 and len(row["frames"]) == 16


def test_the_keyframe_frame_is_the_frame_shown_at_that_second(ava):
    dataset, cfg, _, output = ava
    row = next(r for r in rows(output) if r["keyframe_sec"] == dataset.keyframe_seconds[2])
    stored = decode_images(
        row["frames"],
        codec=row["frames_codec"],
        height=row["height"],
        width=row["width"],
        channels=3,
    )[row["keyframe_offset"]]
    centre = round((row["keyframe_sec"] - dataset.time_offset) * cfg.ingest.fps)
    source = list(iter_frames(dataset.videos[row["video_id"]], fps=10, short_side=96))
    # JPEG moves pixels a little: the stored frame is nearest the source frame at
    # the keyframe's time, not one of its neighbours.
    distance = {
        i: np.abs(stored.astype(int) - source[i].astype(int)).mean()
        for i in range(centre - 3, centre + 4)
    }
    assert min(distance, key=distance.get) == centre, distance


def test_the_label_map_gives_the_classes(ava):
    dataset, _, _, output = ava
    info = yaml.safe_load((output / "dataset.yaml").read_text())
    label_map = read_label_map(dataset.label_map)
    assert info["classes"] == [label_map.name(i) for i in label_map.ids]
    assert info["layout"] == "ava"


def test_bad_annotation_rows_are_reported_on_the_manifest_not_clipped(ray_local, tmp_path):
    dataset = write_ava_dataset(tmp_path / "src", num_videos=2, val_videos=1, duration_sec=4)
    train = dataset.annotations["train"]
    lines = train.read_text().splitlines()
    video = lines[0].split(",")[0]
    bad = [f"{video},0901,0.1,0.1,1.2,0.5,1,7", f"{video},0901,0.1,0.1,0.4,0.5,99,8"]
    train.write_text("\n".join([*lines, *bad]) + "\n")
    cfg = load_config(
        None,
        [
            f"ingest.input={dataset.root}",
            "ingest.layout=ava",
            f"ingest.output={tmp_path / 'out'}",
            f"ingest.ava_time_offset={dataset.time_offset}",
            "ingest.window_frames=8",
            "flow.backend=none",
        ],
    )
    run_ingest(cfg, log=lambda line: None)
    manifest = {r["video_id"]: r for r in read_manifest(tmp_path / "out")}
    note = manifest[video]["error"]
    assert manifest[video]["status"] == "ok"
    assert note.startswith("2 annotation rows left out")
    assert "outside [0, 1]" in note and "99" in note
    person_ids = {p for r in rows(tmp_path / "out") for p in r["person_ids"]}
    assert not {7, 8} & person_ids  # the bad rows' people are nowhere in the data


def test_a_wrong_time_offset_or_a_missing_video_quarantines_with_the_reason(ray_local, tmp_path):
    dataset = write_ava_dataset(tmp_path / "src", num_videos=2, val_videos=1, duration_sec=4)
    gone = dataset.videos[dataset.splits["val"][0]]
    shutil.move(gone, tmp_path / gone.name)
    cfg = load_config(
        None,
        [
            f"ingest.input={dataset.root}",
            "ingest.layout=ava",
            f"ingest.output={tmp_path / 'out'}",
            "ingest.ava_time_offset=0",  # these are 900-based cuts: every keyframe is past the end
            "ingest.window_frames=8",
            "flow.backend=none",
        ],
    )
    summary = run_ingest(cfg, log=lambda line: None)
    assert summary.ingested == 0 and summary.quarantined == 2
    manifest = {r["video_id"]: r for r in read_manifest(tmp_path / "out")}
    assert "no video file for AVA id" in manifest[gone.stem]["error"]
    (other,) = (v for v in manifest if v != gone.stem)
    assert "past the end of the video (ingest.ava_time_offset=0)" in manifest[other]["error"]


def test_a_folder_without_ava_files_is_a_clear_error(tmp_path):
    from vidray.data.sources import list_sources

    (tmp_path / "videos").mkdir()
    with pytest.raises(VidrayError, match=r"ava_action_list_v2.2.pbtxt not found"):
        list_sources(str(tmp_path), layout="ava")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "ava_action_list_v2.2.pbtxt").write_text(
        'label { name: "stand" label_id: 1 }\n'
    )
    with pytest.raises(VidrayError, match=r"not an AVA layout"):
        list_sources(str(tmp_path), layout="ava")


def test_every_video_extension_ingest_knows_is_found_in_an_ava_folder(tmp_path):
    """AVA's videos come as .mp4, .mkv and .webm; ingest lists any video file the other
    layouts list (an .m4v was silently missing before)."""
    from vidray.data.sources import list_sources

    dataset = write_ava_dataset(tmp_path / "ava")
    renamed = {}
    for (video_id, path), extension in zip(
        sorted(dataset.videos.items()), [".m4v", ".MOV", ".mkv", ".mp4"], strict=False
    ):
        renamed[video_id] = path.rename(path.with_suffix(extension)).name
    listing = list_sources(str(dataset.root), layout="ava")
    found = {entry.video_id: entry.path.rsplit("/", 1)[1] for entry in listing.entries}
    assert {vid: found.get(vid) for vid in renamed} == renamed
