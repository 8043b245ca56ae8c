"""Ingest end to end on local Ray: every layout, hostile files, resume, a killed run."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from commands import as_from_a_terminal, own_lines
from media import (
    SMALL,
    make_audio_only,
    make_mpegts,
    make_text_file,
    make_thumbnail_first,
    make_truncated,
    make_vfr_video,
    make_video,
    make_with_garbage,
    make_zero_byte,
    unicode_name,
)

from vidray.cli import run_command
from vidray.config import load_config
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_dataset_info, read_journal, read_manifest
from vidray.errors import VidrayError

REPO = Path(__file__).resolve().parents[1]


def ingest(input_path, output, *overrides, layout="folders"):
    cfg = load_config(
        None,
        [
            f"ingest.input={input_path}",
            f"ingest.output={output}",
            f"ingest.layout={layout}",
            *SMALL,
            *overrides,
        ],
    )
    return run_ingest(cfg, log=lambda line: None)


def shard_rows(output: Path):
    files = sorted((output / "windows").glob("*.parquet"))
    if not files:
        return []
    return [
        row
        for f in files
        for row in pq.read_table(f, columns=["video_id", "window_idx"]).to_pylist()
    ]


def windows_of(output: Path, row: dict, columns: list[str] | None = None) -> list[dict]:
    """A video's rows in its shards (a shard holds the windows of many videos)."""
    found = []
    for shard in row["shards"]:
        table = pq.read_table(output / "windows" / shard)
        mine = table.filter(pc.equal(table["video_id"], row["video_id"]))
        found += mine.select(columns or mine.column_names).to_pylist()
    return found


def check_consistent(output: Path):
    """Every ok manifest row's windows are in the shards, and nothing else is; nothing
    temporary (shards being written, the journal, the lock) is left."""
    manifest = read_manifest(output)
    rows = shard_rows(output)
    per_video = {}
    for row in rows:
        per_video[row["video_id"]] = per_video.get(row["video_id"], 0) + 1
    ok = {m["video_id"]: m["n_windows"] for m in manifest if m["status"] == "ok"}
    assert per_video == ok
    assert not list(output.rglob("*.tmp"))
    assert not any((output / name).exists() for name in ("_tmp", "_journal", "_lock"))
    return manifest


@pytest.fixture(scope="module")
def hostile_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    a, b = root / "alpha", root / "beta"
    a.mkdir()
    b.mkdir()
    expect = {}

    def add(path, status):
        expect[path.relative_to(root).with_suffix("").as_posix()] = status

    for i in range(2):
        add(make_video(a / f"good{i}.mp4", num_frames=24), "ok")
        add(make_video(b / f"good{i}.mkv", num_frames=24), "ok")
    add(make_zero_byte(a / "zero.mp4"), "quarantined")
    add(make_text_file(a / "notes.mp4"), "quarantined")
    add(make_text_file(b / "readme.txt"), "quarantined")
    add(make_truncated(a / "truncated.mp4", num_frames=40), "ok")
    add(make_with_garbage(a / "garbage.mp4", num_frames=24), "ok")
    add(make_video(a / "one_frame.mp4", num_frames=1), "quarantined")
    add(make_video(a / "short.mp4", num_frames=4), "ok")
    add(make_video(b / "tiny.mp4", num_frames=12, size=(18, 10)), "ok")
    add(make_video(b / "odd.avi", num_frames=12, size=(97, 61)), "ok")
    add(make_video(b / "portrait.mp4", num_frames=12, size=(64, 48), rotation=-90), "ok")
    add(make_video(b / "fast.mp4", num_frames=120, fps=120), "ok")
    add(make_video(b / "slow.mp4", num_frames=6, fps=2), "ok")
    add(make_audio_only(b / "audio.m4a"), "quarantined")
    add(make_audio_only(b / "album.mp4", cover=True), "quarantined")
    add(make_thumbnail_first(b / "thumb.mkv", num_frames=24), "ok")
    add(make_vfr_video(b / "vfr.mp4", [0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.1, 1.6]), "ok")
    add(make_mpegts(b / "cut.ts", num_frames=20), "ok")
    add(make_video(unicode_name(a), num_frames=16), "ok")
    return root, expect


@pytest.fixture(scope="module")
def hostile_output(ray_local, hostile_tree, tmp_path_factory):
    root, _ = hostile_tree
    output = tmp_path_factory.mktemp("hostile_out")
    summary = ingest(root, output)
    return output, summary


def test_every_hostile_file_has_exactly_one_manifest_row(hostile_tree, hostile_output):
    _, expect = hostile_tree
    output, summary = hostile_output
    manifest = check_consistent(output)
    assert sorted(m["video_id"] for m in manifest) == sorted(expect)
    status = {m["video_id"]: m["status"] for m in manifest}
    assert status == expect
    assert summary.quarantined == sum(s == "quarantined" for s in expect.values())
    for row in manifest:
        if row["status"] == "quarantined":
            assert row["error"], row


def test_quarantine_reasons_say_what_is_wrong(hostile_output):
    output, _ = hostile_output
    errors = {m["video_id"].split("/")[-1]: m["error"] for m in read_manifest(output)}
    assert "empty" in errors["zero"].lower() or "0 bytes" in errors["zero"]
    assert "no video stream" in errors["audio"]
    assert "only a cover picture" in errors["album"]
    assert "fewer than 2 decodable frames" in errors["one_frame"]


def test_the_summary_shows_each_quarantine_reason_whole_and_without_the_path(
    hostile_tree, hostile_output
):
    root, _ = hostile_tree
    output, summary = hostile_output
    quarantined = [m["error"] for m in read_manifest(output) if m["status"] == "quarantined"]
    assert summary.reasons == Counter(quarantined)
    assert not [error for error in quarantined if str(root) in error]
    report = summary.report().splitlines()
    assert "ingest: quarantined 1x: empty file (0 bytes)" in report
    assert any(
        line.startswith("ingest: quarantined 1x: not a recognised video format (")
        for line in report
    )


def test_short_video_is_one_window_padded_with_its_last_frame(hostile_output):
    output, _ = hostile_output
    row = next(m for m in read_manifest(output) if m["video_id"] == "alpha/short")
    assert row["n_windows"] == 1 and row["padded"] == 8 - 4
    shard = windows_of(output, row)[0]
    assert shard["padded"] == 4 and len(shard["frames"]) == 8
    assert shard["frames"][-1] == shard["frames"][-2] == shard["frames"][3]


def test_truncated_file_keeps_the_windows_before_the_cut(hostile_output):
    output, _ = hostile_output
    row = next(m for m in read_manifest(output) if m["video_id"] == "alpha/truncated")
    assert row["status"] == "ok" and 1 <= row["n_windows"] < 40 // 8


def stored_size(output: Path, video_id: str) -> tuple[int, int]:
    """(width, height) of a video's stored frames, and its manifest row."""
    row = next(m for m in read_manifest(output) if m["video_id"] == video_id)
    window = windows_of(output, row, ["height", "width"])[0]
    return (window["width"], window["height"]), row


def test_sizes_are_resized_to_the_short_side_with_even_dimensions(hostile_output):
    output, _ = hostile_output
    (w, h), row = stored_size(output, "beta/odd")  # 97x61
    assert (w, h) == (50, 32) and row["error"] is None


def test_a_tiny_source_is_enlarged_at_most_max_upscale_and_its_row_says_so(hostile_output):
    output, summary = hostile_output
    (w, h), row = stored_size(output, "beta/tiny")  # 18x10, short side 32 would be 3.2x
    assert (w, h) == (36, 20)  # 2x, the default ingest.max_upscale
    assert row["status"] == "ok"
    assert row["error"].startswith("small source (18x10): stored at 36x20")
    assert "ingest.max_upscale=2" in row["error"]
    assert summary.small == 1 and "1 videos are smaller than the short side" in summary.report()


def test_a_rotated_phone_video_is_stored_upright(hostile_output):
    output, _ = hostile_output
    row = next(m for m in read_manifest(output) if m["video_id"] == "beta/portrait")
    assert (row["width"], row["height"]) == (48, 64)
    window = windows_of(output, row, ["height", "width"])[0]
    assert (window["width"], window["height"]) == (32, 42)


def test_high_and_low_fps_share_the_base_rate(hostile_output):
    output, _ = hostile_output
    rows = {m["video_id"]: m for m in read_manifest(output)}
    # 120 frames at 120 fps = 1 s = 10 frames at 10 fps -> one window of 8
    assert rows["beta/fast"]["n_windows"] == 1 and rows["beta/fast"]["padded"] == 0
    # 6 frames at 2 fps = 3 s = 30 frames at 10 fps -> 3 windows of 8
    assert rows["beta/slow"]["n_windows"] == 3


def test_rerun_skips_done_files_retries_quarantined_ones_and_keeps_broken_ones(ray_local, tmp_path):
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(2):
        make_video(root / "a" / f"v{i}.mp4", num_frames=16)
        make_video(root / "b" / f"v{i}.mp4", num_frames=16)
    make_zero_byte(root / "b" / "broken.mp4")
    output = tmp_path / "out"
    first = ingest(root, output)
    assert (first.ingested, first.quarantined) == (4, 1)
    before = {p.name: p.stat().st_mtime_ns for p in (output / "windows").glob("*.parquet")}

    make_video(root / "b" / "broken.mp4", num_frames=16)  # the user fixes the file
    second = ingest(root, output)
    assert (second.skipped, second.ingested, second.quarantined) == (4, 1, 0)
    after = {p.name: p.stat().st_mtime_ns for p in (output / "windows").glob("*.parquet")}
    assert {k: after[k] for k in before} == before  # done shards untouched
    assert len(after) == len(before) + 1
    check_consistent(output)

    make_text_file(root / "a" / "v0.mp4")  # an ingested file, overwritten with junk
    third = ingest(root, output)
    assert (third.skipped, third.quarantined, third.kept_earlier, third.ok) == (4, 0, 1, 5)
    report = third.report().splitlines()
    assert report[0].endswith("0 quarantined, 1 kept at their earlier version of 5 files")
    assert any(
        line.startswith("ingest: changed, now failing, earlier version kept 1x: not a recognised")
        for line in report
    )
    row = next(m for m in check_consistent(output) if m["video_id"] == "a/v0")
    assert row["status"] == "ok" and row["error"].endswith("earlier from this file are kept")


def test_a_changed_file_is_re_ingested_and_a_deleted_one_kept_until_pruned(ray_local, tmp_path):
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    make_video(root / "a" / "keep.mp4", num_frames=16)
    make_video(root / "b" / "change.mp4", num_frames=16)
    make_video(root / "b" / "delete.mp4", num_frames=16)
    output = tmp_path / "out"
    ingest(root, output)
    deleted = {m["video_id"]: m["shards"] for m in read_manifest(output)}["b/delete"]
    stamps = {s: (output / "windows" / s).stat().st_mtime_ns for s in deleted}
    make_video(root / "b" / "change.mp4", num_frames=32)
    (root / "b" / "delete.mp4").unlink()

    summary = ingest(root, output)
    assert (summary.skipped, summary.ingested, summary.gone) == (1, 1, 1)
    assert "1 videos in the dataset are no longer in the input; kept" in summary.report()
    manifest = check_consistent(output)  # the changed file's earlier shards are gone too
    windows = {m["video_id"]: m["n_windows"] for m in manifest}
    assert windows == {"a/keep": 2, "b/change": 4, "b/delete": 2}
    assert {s: (output / "windows" / s).stat().st_mtime_ns for s in deleted} == stamps
    assert read_dataset_info(output)["videos"] == 3

    pruned = ingest(root, output, "ingest.mode=prune")
    assert (pruned.skipped, pruned.ingested, pruned.gone) == (2, 0, 1)
    assert "1 videos no longer in the input were deleted" in pruned.report()
    manifest = check_consistent(output)
    assert sorted(m["video_id"] for m in manifest) == ["a/keep", "b/change"]
    assert not any((output / "windows" / s).exists() for s in deleted)


def test_a_second_file_with_a_videos_id_is_quarantined_and_the_video_kept(ray_local, tmp_path):
    root = tmp_path / "videos"
    make_video(root / "cat" / "a.avi", num_frames=16)
    make_video(root / "cat" / "a.mp4", num_frames=16)  # the same video_id, cat/a
    make_video(root / "cat" / "b.mp4", num_frames=16)
    output = tmp_path / "out"
    for _ in range(2):  # and again into the same output
        summary = ingest(root, output)
        assert (summary.ingested + summary.skipped, summary.quarantined) == (2, 1)
        rows = sorted((Path(m["path"]).name, m["status"]) for m in check_consistent(output))
        assert rows == [("a.avi", "ok"), ("a.mp4", "quarantined"), ("b.mp4", "ok")]
    assert summary.skipped == 2


def test_long_video_is_split_into_segments_with_the_same_windows(ray_local, tmp_path):
    root = tmp_path / "videos" / "c"
    root.mkdir(parents=True)
    make_video(root / "long.mp4", num_frames=100, options={"g": "10"})
    whole, split = tmp_path / "whole", tmp_path / "split"
    ingest(root.parent, whole, "ingest.val_fraction=0")
    ingest(root.parent, split, "ingest.segment_windows=3", "ingest.val_fraction=0")
    row = read_manifest(split)[0]
    assert row["n_windows"] == 12  # 4 segments, in one task: the file is short

    def windows(output):
        files = sorted((output / "windows").glob("*.parquet"))
        columns = ["window_idx", "frames", "flow"]
        rows = [r for f in files for r in pq.read_table(f, columns=columns).to_pylist()]
        return sorted(rows, key=lambda r: r["window_idx"])

    a, b = windows(whole), windows(split)
    assert [r["window_idx"] for r in a] == [r["window_idx"] for r in b] == list(range(12))
    for x, y in zip(a, b, strict=True):
        assert x == y, f"window {x['window_idx']}: {[k for k in x if x[k] != y[k]]} differ"


def test_storage_parameters_cannot_change_in_one_output(ray_local, tmp_path):
    root = tmp_path / "videos" / "a"
    root.mkdir(parents=True)
    make_video(root / "v.mp4", num_frames=16)
    ingest(root.parent, tmp_path / "out")
    with pytest.raises(VidrayError, match=r"ingested with ingest.fps=10.0, not 5.0"):
        ingest(root.parent, tmp_path / "out", "ingest.fps=5")
    # The split of every stored window would be the old one.
    with pytest.raises(VidrayError, match=r"ingested with ingest.val_fraction=0.2, not 0.5: "):
        ingest(root.parent, tmp_path / "out", "ingest.val_fraction=0.5")


def test_nothing_ingestible_exits_non_zero_with_one_line(ray_local, tmp_path, capsys):
    root = tmp_path / "videos" / "a"
    root.mkdir(parents=True)
    make_zero_byte(root / "v.mp4")
    code = run_command(
        "ingest", ["--input", str(root.parent), "--output", str(tmp_path / "out"), *SMALL]
    )
    err = own_lines(capsys.readouterr().err)
    assert code == 2
    assert len(err) == 1 and "no video could be ingested" in err[0]


def test_missing_input_is_one_line_error(ray_local, tmp_path, capsys):
    code = run_command(
        "ingest", ["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    )
    err = own_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "nope" in err[0]


def test_config_typo_is_one_line_error(tmp_path, capsys):
    code = run_command(
        "ingest", ["--input", ".", "--output", str(tmp_path), "ingest.window_frame=8"]
    )
    err = own_lines(capsys.readouterr().err)
    assert code == 2 and "did you mean 'ingest.window_frames'" in err[0] and len(err) == 1


# ----------------------------------------------------------------------------- layouts


def test_csv_layout_with_missing_file_and_missing_label(ray_local, tmp_path):
    make_video(tmp_path / "clips" / "x.mp4", num_frames=16)
    make_video(tmp_path / "clips" / "y.mp4", num_frames=16)
    make_video(tmp_path / "clips" / "z.mp4", num_frames=16)
    listing = tmp_path / "labels.csv"
    listing.write_text(
        "path,label,split\nclips/x.mp4,walk,train\nclips/y.mp4,run,val\n"
        "clips/gone.mp4,run,train\nclips/z.mp4,,train\n"
    )
    output = tmp_path / "out"
    summary = ingest(listing, output, layout="csv")
    manifest = {m["video_id"]: m for m in check_consistent(output)}
    assert summary.ingested == 2
    assert manifest["clips/gone"]["status"] == "quarantined"
    assert "not found" in manifest["clips/gone"]["error"]
    assert (
        manifest["clips/z"]["status"] == "quarantined" and "label" in manifest["clips/z"]["error"]
    )
    assert read_dataset_info(output)["classes"] == ["run", "walk"]
    assert {m["split"] for m in manifest.values() if m["status"] == "ok"} == {"train", "val"}

    listing.write_text(
        listing.read_text().replace("clips/x.mp4,walk,train", "clips/x.mp4,walk,val")
    )
    again = ingest(listing, output, layout="csv")
    assert (again.ingested, again.skipped) == (1, 1)  # x moved to val: its windows too
    x = next(m for m in check_consistent(output) if m["video_id"] == "clips/x")
    assert x["split"] == "val"
    for shard in x["shards"]:  # a shard holds one split
        assert set(pq.read_table(output / "windows" / shard)["split"].to_pylist()) == {"val"}


def test_malformed_csv_names_the_file_and_line(ray_local, tmp_path):
    listing = tmp_path / "labels.csv"
    listing.write_text("path,label\na.mp4,x\nb.mp4,y,train,extra,more\n")
    with pytest.raises(VidrayError, match=r"labels.csv:3"):
        ingest(listing, tmp_path / "out", layout="csv")


def test_ucf101_layout_uses_the_split_lists(ray_local, tmp_path):
    root = tmp_path / "UCF101"
    for cls in ("ApplyLipstick", "Biking"):
        for g in (1, 2):
            make_video(root / "UCF-101" / cls / f"v_{cls}_g0{g}_c01.avi", num_frames=16)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyLipstick\n2 Biking\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyLipstick/v_ApplyLipstick_g01_c01.avi 1\nBiking/v_Biking_g01_c01.avi 2\n"
        "Biking/v_Biking_g09_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text(
        "ApplyLipstick/v_ApplyLipstick_g02_c01.avi\nBiking/v_Biking_g02_c01.avi\n"
        "Juggling/v_Juggling_g01_c01.avi\n"
    )
    output = tmp_path / "out"
    summary = ingest(root, output, layout="ucf101")
    manifest = {m["video_id"]: m for m in check_consistent(output)}
    assert summary.ingested == 4 and summary.quarantined == 2
    with pytest.raises(VidrayError, match=r"ingested with ingest.split=1, not 2: "):
        ingest(root, output, "ingest.split=2", layout="ucf101")
    ok = {k: (m["split"], m["label"]) for k, m in manifest.items() if m["status"] == "ok"}
    assert ok == {
        "ApplyLipstick/v_ApplyLipstick_g01_c01": ("train", 0),
        "Biking/v_Biking_g01_c01": ("train", 1),
        "ApplyLipstick/v_ApplyLipstick_g02_c01": ("test", 0),
        "Biking/v_Biking_g02_c01": ("test", 1),
    }


def test_kinetics_layout_trims_full_videos(ray_local, tmp_path):
    make_video(tmp_path / "train" / "abc_000002_000004.mp4", num_frames=20)
    make_video(tmp_path / "train" / "fullvid.mp4", num_frames=80)  # 8 s, trimmed to [3, 5]
    annotations = tmp_path / "kinetics.csv"
    with annotations.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerow(["dancing", "abc", 2, 4, "train"])
        writer.writerow(["juggling", "fullvid", 3, 5, "validate"])
        writer.writerow(["juggling", "missing", 0, 10, "train"])
    output = tmp_path / "out"
    summary = ingest(annotations, output, layout="kinetics")
    assert summary.ingested == 2 and summary.quarantined == 1
    check_consistent(output)
    row = next(m for m in read_manifest(output) if m["video_id"] == "fullvid_000003_000005")
    assert row["split"] == "val" and row["n_windows"] == 2  # 2 s at 10 fps = 20 frames
    starts = [w["start_sec"] for w in windows_of(output, row, ["start_sec"])]
    assert starts == pytest.approx([3.0, 3.8])


def test_flat_layout_is_unlabeled(ray_local, tmp_path):
    make_video(tmp_path / "v" / "deep" / "one.mp4", num_frames=16)
    make_video(tmp_path / "v" / "two.webm", num_frames=16)
    output = tmp_path / "out"
    summary = ingest(tmp_path / "v", output, layout="flat")
    assert summary.ingested == 2
    labels = pq.read_table(sorted((output / "windows").glob("*.parquet")), columns=["label"])
    assert set(labels["label"].to_pylist()) == {-1}


# ------------------------------------------------------------------ stopped and killed runs


def end_session(sid: int) -> None:
    """Kill what is left of session ``sid`` and return once none of it runs. Ray's workers
    go on for up to a minute after their driver is killed (they wait for the GCS to come
    back), and a segment one of them finishes meanwhile records itself."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):  # ended meanwhile
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getsid(int(entry)) == sid and state != "Z":
                    running.append(int(entry))
        if not running:
            return
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise AssertionError(f"processes of session {sid} still run after 60 s")


@pytest.mark.slow
def test_a_stopped_or_killed_ingest_resumes_without_redoing_a_finished_segment(
    ray_local, tmp_path, monkeypatch, capsys
):
    """Ctrl-C, then a kill, then a run to the end: the same command each time, typed in
    a fresh folder (the last one in this process, to spare a Ray start). Three videos of
    7 windows, one window a segment; each short file is probed in its task, one a shard (a
    tiny ingest.shard_mb), so the run is stopped after the first and killed after one more."""
    for i in range(3):
        make_video(tmp_path / "videos" / f"c{i % 2}" / f"v{i}.mp4", num_frames=60)
    output = tmp_path / "data"
    command = [
        "--input=videos",
        "--output=data",
        *SMALL,
        "ingest.segment_windows=1",
        "ingest.shard_mb=0.000001",
        "flow.backend=farneback",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.ingest", *command, "ray.num_cpus=1"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its Ray processes are found by their session id
            preexec_fn=as_from_a_terminal,
        )

    def shards() -> set[str]:
        return {p.name for p in (output / "windows").glob("*.parquet")}

    def wait_for(count: int, run: subprocess.Popen) -> None:
        deadline = time.monotonic() + 240
        while len(shards()) < count and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it could be stopped"

    def journaled() -> list[dict]:
        """The journal's records of published shards (a task stopped between recording
        its shard and publishing it leaves a record of a shard that is not there)."""
        return [r for r in read_journal(output) if (output / "windows" / r["shard"]).exists()]

    def recorded() -> dict[str, tuple[int, int]]:
        """Inode and mtime of each shard the manifest or the journal names."""
        named = {s for row in read_manifest(output) for s in row["shards"]}
        named |= {r["shard"] for r in journaled() if r["n_windows"]}
        return {
            s: ((output / "windows" / s).stat().st_ino, (output / "windows" / s).stat().st_mtime_ns)
            for s in named
        }

    stopped = start()
    wait_for(1, stopped)
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 130, err[-2000:]
    (line,) = [text for text in err.splitlines() if "interrupted" in text]
    assert re.fullmatch(
        r"python -m pipelines\.ingest: interrupted: \d of 3 videos ingested and recorded in "
        rf"{re.escape(str(output / 'manifest.parquet'))}( and \d+ finished segments of \d "
        r"longer videos)?; run the same command again to continue",
        line,
    ), line
    after_stop = recorded()
    assert set(after_stop) == shards()  # every finished shard is on record

    killed = start()
    wait_for(len(after_stop) + 1, killed)
    killed.kill()
    killed.wait()
    end_session(killed.pid)  # its workers too: the journal is read once nothing writes
    for shard in (output / "windows").glob("*"):
        assert shard.suffix == ".parquet"
        pq.read_table(shard)  # every visible shard is complete
    after_kill = recorded()
    assert {s: after_kill.get(s) for s in after_stop} == after_stop  # the kill redid none

    journal = journaled()
    per_video = Counter(r["video_id"] for r in journal)
    done_before = {m["video_id"] for m in read_manifest(output) if m["status"] == "ok"}
    done_before |= {vid for vid, n in per_video.items() if n == 7}
    reused = sum(n for vid, n in per_video.items() if vid not in done_before)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_command("ingest", command) == 0
    resumed = f" (with {reused} segments done before)" if reused else ""
    report = capsys.readouterr().out
    assert f"{3 - len(done_before)} ingested{resumed}, {len(done_before)} already done" in report
    manifest = check_consistent(output)
    assert len(manifest) == 3 and all(m["status"] == "ok" and m["n_windows"] == 7 for m in manifest)
    assert {s: recorded().get(s) for s in after_kill} == after_kill  # nothing on record redone
    assert not (output / "_tmp").exists() and not (output / "_journal").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ingest.fps=0", "ingest.fps must be > 0"),
        ("ingest.window_frames=1", "ingest.window_frames must be >= 2"),
        ("ingest.short_side=63", "ingest.short_side must be even"),
        ("ingest.segment_windows=0", "ingest.segment_windows must be >= 1"),
        ("flow.bound=0", "flow.bound must be > 0"),
    ],
)
def test_bad_ingest_values_are_rejected_before_any_work(tmp_path, override, message):
    with pytest.raises(VidrayError, match=message):
        ingest(tmp_path, tmp_path / "out", override)
    assert not (tmp_path / "out").exists()


def test_unset_input_says_how_to_set_it(tmp_path):
    cfg = load_config(None, [f"ingest.output={tmp_path}"])
    with pytest.raises(VidrayError, match="pass --input PATH"):
        run_ingest(cfg)


def test_short_segments_are_packed_and_long_ones_run_alone():
    from vidray.data.segments import pack_segments

    segments = [{"id": i, "windows": w} for i, w in enumerate([2, 2, 2, 8, 3, 8, 1])]
    tasks = pack_segments(segments, windows_per_task=8)
    assert [[s["id"] for s in task] for task in tasks] == [[0, 1, 2], [3], [4], [5], [6]]
    assert all(sum(s["windows"] for s in t) <= 8 or len(t) == 1 for t in tasks)
