"""An output holds one dataset: ingest adds to it, never deletes or replaces it unless
told to (ingest.mode), and never reads its own output as input."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from media import SMALL, make_video

from vidray.config import load_config
from vidray.data.ingest import check_ingest, run_ingest
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.errors import VidrayError


def config(source, output, *overrides: str):
    return load_config(
        None, [f"ingest.input={source}", f"ingest.output={output}", *SMALL, *overrides]
    )


def ingest(source, output, *overrides: str, log=None):
    return run_ingest(config(source, output, *overrides), log=log or (lambda line: None))


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_another_input_is_refused_before_any_work_unless_replace(ray_local, tmp_path):
    for part in ("a", "b"):
        make_video(tmp_path / "part" / part / "walk" / f"{part}.mp4", num_frames=16)
    output = tmp_path / "data"
    ingest(tmp_path / "part" / "a", output)
    before = snapshot(output)

    for overrides in ([f"ingest.input={tmp_path / 'part' / 'b'}"], ["ingest.layout=flat"]):
        cfg = load_config(
            None,
            [
                f"ingest.input={tmp_path / 'part' / 'a'}",
                f"ingest.output={output}",
                *SMALL,
                *overrides,
            ],
        )
        for attempt in (check_ingest, run_ingest):
            with pytest.raises(
                VidrayError, match=r"holds the dataset of .*part/a \(layout folders\)"
            ) as caught:
                attempt(cfg)
            message = str(caught.value)
            assert "\n" not in message and "ingest.mode=replace" in message
    assert snapshot(output) == before  # nothing written, nothing deleted

    lines: list[str] = []
    summary = ingest(tmp_path / "part" / "b", output, "ingest.mode=replace", log=lines.append)
    assert summary.ingested == 1
    assert any("ingest.mode=replace: deleted the dataset in" in line for line in lines)
    assert [row["video_id"] for row in read_manifest(output)] == ["walk/b"]
    assert read_dataset_info(output)["input"] == str(tmp_path / "part" / "b")
    assert len(list((output / "windows").glob("*.parquet"))) == 1


def test_new_files_are_added_and_stored_labels_keep_their_meaning(ray_local, tmp_path):
    videos, output = tmp_path / "videos", tmp_path / "data"
    make_video(videos / "walk" / "w.mp4", num_frames=16)
    ingest(videos, output, "ingest.val_fraction=0")
    make_video(videos / "jump" / "j.mp4", num_frames=16)  # sorts before "walk"
    lines: list[str] = []
    summary = ingest(videos, output, "ingest.val_fraction=0", log=lines.append)
    assert (summary.skipped, summary.ingested) == (1, 1)
    assert read_dataset_info(output)["classes"] == ["walk", "jump"]
    assert any("new classes after the dataset's 1: jump" in line for line in lines)
    labels = {}
    for row in read_manifest(output):
        table = pq.read_table(output / "windows" / row["shards"][0], columns=["label", "video_id"])
        mine = table.filter(pc.equal(table["video_id"], row["video_id"]))
        labels[row["video_id"]] = (row["label"], set(mine["label"].to_pylist()))
    assert labels == {"walk/w": (0, {0}), "jump/j": (1, {1})}


def test_videos_of_the_dataset_keep_their_split_when_more_are_added(ray_local, tmp_path):
    videos, output = tmp_path / "videos", tmp_path / "data"
    fractions = ("ingest.val_fraction=0.34", "ingest.test_fraction=0.34")
    for i in range(3):
        make_video(videos / "walk" / f"{i}.mp4", num_frames=16)
    ingest(videos, output, *fractions)
    before = {row["video_id"]: row["split"] for row in read_manifest(output)}
    assert sorted(before.values()) == ["test", "train", "val"]
    # Seven videos listed afresh would put walk/1 (test) in train: a leak.
    for i in range(3, 7):
        make_video(videos / "walk" / f"{i}.mp4", num_frames=16)
    summary = ingest(videos, output, *fractions)
    after = {row["video_id"]: row["split"] for row in read_manifest(output)}
    assert (summary.skipped, summary.ingested) == (3, 4)  # none moved, so none redone
    assert {video: after[video] for video in before} == before
    assert sorted(after.values()).count("val") == 2 and sorted(after.values()).count("test") == 2


def test_an_output_inside_the_input_is_never_read_as_input(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_video(Path("videos/a/one.mp4"), num_frames=16)
    make_video(Path("videos/b/two.mp4"), num_frames=16)
    first = ingest("videos", "videos/data")
    second = ingest("videos", "videos/data")
    assert (first.listed, first.ingested) == (2, 2)
    assert (second.listed, second.skipped, second.ingested, second.quarantined) == (2, 2, 0, 0)
    assert sorted(row["video_id"] for row in read_manifest("videos/data")) == ["a/one", "b/two"]
    assert read_dataset_info("videos/data")["classes"] == ["a", "b"]
