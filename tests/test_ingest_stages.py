"""Ingest's stage functions without Ray: what becomes a quarantine and what is a bug,
the journal record each finished segment leaves, progress lines while nothing
finishes, and `check_ingest`, which runs before Ray starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from media import SMALL, make_text_file, make_truncated, make_video, make_zero_byte

from vidray.config import load_config
from vidray.data import decode
from vidray.data import ingest as ingest_module
from vidray.data import segments as stages
from vidray.data.ingest import check_ingest, run_ingest
from vidray.data.ledger import is_complete
from vidray.data.lock import OutputLock
from vidray.data.manifest import (
    read_dataset_info,
    read_journal,
    read_manifest,
    write_dataset_info,
)
from vidray.data.progress import Heartbeat, IngestProgress, progress_line
from vidray.data.segments import (
    ingest_segment,
    ingest_task,
    pack_segments,
    plan_segments,
    probe_and_ingest_task,
    probe_entry,
    shard_in_place,
    source_entry,
    window_bytes,
)
from vidray.data.sources import SourceEntry
from vidray.errors import Interrupted, VidrayError

REPO = Path(__file__).resolve().parents[1]


def config(*overrides: str):
    return load_config(None, [*SMALL, *overrides])


def entry(path: Path) -> dict:
    """A listed file as ingest carries it into the probe stage."""
    return source_entry(
        SourceEntry(path=str(path), video_id=path.stem, label=0, label_name="a", split="train")
    )


def segments(path: Path, cfg) -> list[dict]:
    return plan_segments(probe_entry(entry(path)), cfg.ingest)


# ------------------------------------------------------------- media errors, and bugs


def test_a_media_error_is_a_reason_without_the_file_name(tmp_path):
    probed = probe_entry(entry(make_zero_byte(tmp_path / "zero.mp4")))
    assert probed["error"] == "empty file (0 bytes)"
    cut = make_truncated(tmp_path / "cut.mp4", num_frames=20, faststart=False)
    assert probe_entry(entry(cut))["error"].startswith("truncated or incomplete MP4/MOV")


def test_a_file_that_cannot_be_read_is_quarantined_not_a_crash(tmp_path, monkeypatch):
    """An object that vanished after the listing (a file:// URI takes the path of an object
    store: fetched to a local copy first), one the store will not stat, and one FFmpeg
    refuses that cannot be read for the MP4 check (chmod 000; the tests run as root)."""
    video = make_video(tmp_path / "v.mp4", num_frames=16)
    listed = entry(video) | {"path": video.as_uri()}
    video.unlink()
    probed = probe_entry(listed)
    assert (
        probed["error"].startswith("cannot read the file (") and "No such file" in probed["error"]
    )

    cfg = config()
    video = make_video(tmp_path / "w.mp4", num_frames=16)
    (segment,) = plan_segments(probe_entry(entry(video) | {"path": video.as_uri()}), cfg.ingest)
    video.unlink()  # between probe and decode
    record = ingest_segment(segment, ingest=cfg.ingest, flow=cfg.flow, output=str(tmp_path / "o"))
    assert record["n_windows"] == 0 and record["error"].startswith("cannot read the file (")

    too_long = SourceEntry(
        path=(tmp_path / f"{'x' * 300}.mp4").as_uri(),
        video_id="x",
        label=0,
        label_name="a",
        split="train",
    )
    assert source_entry(too_long)["error"].startswith("cannot read the file (")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(decode, "_top_boxes", unreadable)
    probed = probe_entry(entry(make_text_file(tmp_path / "notes.mp4")))
    assert probed["error"].startswith("not a recognised video format")


def test_a_bug_in_the_probe_stage_fails_loudly(tmp_path, monkeypatch):
    def broken(path):
        raise ZeroDivisionError("a bug in vidray")

    monkeypatch.setattr(decode, "probe", broken)
    with pytest.raises(ZeroDivisionError, match="a bug in vidray"):
        probe_entry(entry(make_video(tmp_path / "v.mp4", num_frames=16)))


def test_a_file_that_breaks_while_decoding_is_recorded_with_the_reason(tmp_path):
    cfg = config()
    video = make_video(tmp_path / "v.mp4", num_frames=16)
    (segment,) = segments(video, cfg)
    make_text_file(video)  # replaced by garbage between probe and decode
    record = ingest_segment(segment, ingest=cfg.ingest, flow=cfg.flow, output=str(tmp_path / "o"))
    assert record["n_windows"] == 0
    assert record["error"].startswith("not a recognised video format")


def test_a_bug_in_the_decode_stage_fails_loudly_and_leaves_nothing(tmp_path, monkeypatch):
    cfg = config()
    output = tmp_path / "out"
    (segment,) = segments(make_video(tmp_path / "v.mp4", num_frames=16), cfg)

    def broken(*args, **kwargs):
        raise TypeError("a bug in vidray")

    monkeypatch.setattr(stages, "segment_rows", broken)
    with pytest.raises(TypeError, match="a bug in vidray"):
        ingest_segment(segment, ingest=cfg.ingest, flow=cfg.flow, output=str(output))
    assert not list(output.rglob("*.parquet")) and not list(output.rglob("*.tmp"))
    assert read_journal(output) == []


# ------------------------------------------------------------- the journal


def test_a_task_writes_its_segments_into_one_shard_and_records_them_together(tmp_path):
    """Segments of two videos, one split: one shard holds the windows of both, one journal
    file records each segment with that shard and its place in its video."""
    cfg = config("ingest.segment_windows=2", "flow.backend=none")
    output = tmp_path / "out"
    plan = segments(make_video(tmp_path / "v.mp4", num_frames=48), cfg)  # 6 windows
    assert [s["segment"] for s in plan] == [0, 1, 2] and {s["segments"] for s in plan} == {3}
    other = dict(segments(make_video(tmp_path / "w.mp4", num_frames=16), cfg)[0])
    records = ingest_task(
        {"segments": [plan[1], other]}, ingest=cfg.ingest, flow=cfg.flow, output=str(output)
    )
    assert [r["n_windows"] for r in records] == [2, 2]
    assert {r["error"] for r in records} == {None}
    assert read_journal(output) == records
    assert len(list((output / "_journal").iterdir())) == 1
    (shard,) = {r["shard"] for r in records}
    assert [p.name for p in (output / "windows").iterdir()] == [shard]
    assert shard.startswith("train-")
    assert (records[0]["first_window"], records[0]["max_windows"]) == (2, 2)
    table = pq.read_table(output / "windows" / shard, columns=["video_id", "window_idx"])
    rows = zip(table["video_id"].to_pylist(), table["window_idx"].to_pylist(), strict=True)
    assert list(rows) == [("v", 2), ("v", 3), ("w", 0), ("w", 1)]
    size = (output / "windows" / shard).stat().st_size  # shared out by windows, rounded
    assert abs(sum(r["bytes"] for r in records) - size) <= len(records)


def test_a_retried_task_does_not_ingest_a_recorded_segment_again(tmp_path):
    """Ray runs a task again after its worker died: the segments it finished before are
    in the journal with their shard, and are returned as they are."""
    cfg = config("flow.backend=none")
    output = tmp_path / "out"
    (segment,) = segments(make_video(tmp_path / "v.mp4", num_frames=16), cfg)
    first = ingest_task(
        {"segments": [segment]}, ingest=cfg.ingest, flow=cfg.flow, output=str(output)
    )
    shard = output / "windows" / first[0]["shard"]
    stamp = (shard.stat().st_ino, shard.stat().st_mtime_ns)

    def again(segment: dict) -> dict:
        return ingest_segment(segment, ingest=cfg.ingest, flow=cfg.flow, output=str(output))

    assert again(segment) == first[0]
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == stamp
    relabelled = again(dict(segment, label_name="b"))  # another row: redone, in another shard
    assert relabelled["label_name"] == "b" and relabelled["shard"] != shard.name
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == stamp
    shard.unlink()  # the record's shard is gone: redone
    assert again(segment)["n_windows"] == 2 and shard.exists()
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) != stamp


def test_a_shard_appears_only_after_its_record(tmp_path, monkeypatch):
    """A task stopped between recording its shard and publishing it (here: publishing
    fails) leaves a record of a missing shard and no shard: a shard in place is always on
    record, and a record without its shard is done again."""
    cfg = config("flow.backend=none")
    output = tmp_path / "out"
    (segment,) = segments(make_video(tmp_path / "v.mp4", num_frames=16), cfg)

    def stopped_before_publishing(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(stages.storage, "upload", stopped_before_publishing)
        with pytest.raises(KeyboardInterrupt):
            ingest_segment(segment, ingest=cfg.ingest, flow=cfg.flow, output=str(output))
    (record,) = read_journal(output)
    assert record["n_windows"] == 2
    assert not (output / "windows" / record["shard"]).exists()
    assert not shard_in_place(str(output), [record])
    again = ingest_segment(segment, ingest=cfg.ingest, flow=cfg.flow, output=str(output))
    assert again == record and (output / "windows" / record["shard"]).exists()
    assert pq.read_table(output / "windows" / record["shard"]).num_rows == 2


def test_a_task_of_short_files_probes_them_and_writes_one_shard(tmp_path):
    """The probe folded into the decode task: every readable file's segments in the
    task's one shard, journaled; a file the probe refuses comes back as a record of no
    windows with the reason, not journaled (the next run probes it again)."""
    cfg = config("ingest.segment_windows=1", "flow.backend=none")
    output = tmp_path / "out"
    files = [
        entry(make_video(tmp_path / "v.mp4", num_frames=16)),  # 2 windows: 2 segments
        entry(make_zero_byte(tmp_path / "zero.mp4")),
        entry(make_video(tmp_path / "w.mp4", num_frames=8)),
    ]
    records = probe_and_ingest_task(
        {"files": files}, ingest=cfg.ingest, flow=cfg.flow, output=str(output)
    )
    assert [(r["video_id"], r["segment"], r["n_windows"]) for r in records] == [
        ("v", 0, 1),
        ("v", 1, 1),
        ("w", 0, 1),
        ("zero", 0, 0),
    ]
    assert records[-1]["error"] == "empty file (0 bytes)" and records[-1]["segments"] == 1
    assert read_journal(output) == records[:3]
    (shard,) = {r["shard"] for r in records[:3]}
    assert [p.name for p in (output / "windows").iterdir()] == [shard]
    assert is_complete(records[:2]) and is_complete(records[2:3]) and is_complete(records[3:])
    again = probe_and_ingest_task(
        {"files": files}, ingest=cfg.ingest, flow=cfg.flow, output=str(output)
    )
    assert again == records  # Ray retrying the task: nothing written twice


def test_segments_are_packed_per_split_up_to_a_shard_of_bytes():
    """A task (a shard) holds one split; it closes at the window or the byte budget; a
    segment over the budget is a task alone."""
    segments = [
        {"key": str(i), "split": split, "windows": w}
        for i, (split, w) in enumerate(
            [("train", 2), ("val", 2), ("train", 2), ("train", 9), ("val", 1), ("train", 1)]
        )
    ]
    tasks = pack_segments(segments, windows_per_task=100, bytes_per_task=50, bytes_of=lambda s: 10)
    assert [[s["key"] for s in task] for task in tasks] == [["0", "2"], ["3"], ["5"], ["1", "4"]]
    cfg = config("ingest.short_side=128", "flow.codec=raw")
    video = {"width": 320, "height": 240}
    raw = window_bytes(
        video, config("ingest.short_side=128", "ingest.frames_codec=raw").ingest, cfg.flow
    )
    assert raw == 8 * 170 * 128 * 3 + 7 * 170 * 128 * 2 / 2
    assert window_bytes(video, cfg.ingest, config("flow.backend=none").flow) < raw / 4


# ------------------------------------------------------------- progress


def test_progress_lines_keep_coming_while_no_video_finishes():
    progress = IngestProgress({"long/film": 3, "short": 1})
    progress.started("long/film")
    progress.started("long/film")  # two of its segments at once
    progress.started("short")
    progress.encoded(3)
    progress.finished("short", 0, 1)
    started = time.monotonic()
    lines: list[str] = []
    three = threading.Event()

    def log(text: str) -> None:
        lines.append(text)
        if len(lines) == 3:
            three.set()

    with Heartbeat(
        lambda: progress_line(**progress.snapshot(), seconds=time.monotonic() - started),
        log,
        every=0.01,
    ):
        assert three.wait(timeout=60), "the heartbeat stopped"
    assert all(text.startswith("ingest: 1/2 videos done, 1 in flight, 3 windows") for text in lines)
    assert progress_line(done=1, total=32, running=4, windows=90, seconds=605) == (
        "ingest: 1/32 videos done, 4 in flight, 90 windows (0.1/s), 10m05s elapsed"
    )


def test_a_video_is_done_once_each_of_its_segments_finished_once():
    """``film``'s last 2 segments of 3 are to do; ``clip`` was probed in its task, which
    says its plan has 2."""
    progress = IngestProgress({"film": 2, "clip": None})
    for segment in (1, 1, 2):  # segment 1 ran twice: Ray retried its task
        progress.started("film")
        progress.finished("film", segment, 3)
        assert progress.snapshot()["done"] == (segment == 2)
    for segment in (0, 1):
        progress.finished("clip", segment, 2)
    assert progress.snapshot() == {"done": 2, "total": 2, "running": 0, "windows": 0}


# ------------------------------------------------------------- before Ray starts


def test_check_ingest_needs_no_ray_and_writes_nothing(tmp_path):
    make_video(tmp_path / "videos" / "a" / "v.mp4", num_frames=16)
    code = (
        "import sys\n"
        "from vidray.config import load_config\n"
        "from vidray.data.ingest import check_ingest\n"
        "check_ingest(load_config(None, ['ingest.input=videos', 'ingest.output=data']))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, r"input path videos does not exist"),
        ([], r"input videos holds no video files"),
        (["a/readme.txt"], r"input videos holds no video files \(looked for .*\.mkv .*\.mp4 "),
    ],
    ids=["missing", "empty", "no-video-files"],
)
def test_an_input_without_videos_fails_before_any_output_folder(
    tmp_path, monkeypatch, files, message
):
    monkeypatch.chdir(tmp_path)
    if files is not None:
        Path("videos").mkdir()
        for name in files:
            Path("videos", name).parent.mkdir(parents=True, exist_ok=True)
            make_text_file(Path("videos", name))
    cfg = config("ingest.input=videos", "ingest.output=data")
    for attempt in (check_ingest, run_ingest):
        with pytest.raises(VidrayError, match=message) as caught:
            attempt(cfg)
        assert "\n" not in str(caught.value)
    assert not Path("data").exists()


def test_an_output_that_is_the_input_folder_is_refused(tmp_path):
    make_video(tmp_path / "videos" / "a" / "v.mp4", num_frames=16)
    videos = tmp_path / "videos"
    with pytest.raises(VidrayError, match="is the input folder: choose another --output"):
        check_ingest(config(f"ingest.input={videos}", f"ingest.output={videos}/"))


def test_max_upscale_below_one_is_refused(tmp_path):
    with pytest.raises(VidrayError, match=r"ingest.max_upscale must be 0 \(no limit\) or >= 1"):
        check_ingest(
            config(f"ingest.input={tmp_path}", "ingest.output=o", "ingest.max_upscale=0.5")
        )


# ------------------------------------------------------------- one run at a time


def test_a_second_ingest_into_an_output_in_use_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_video(Path("videos/a/v.mp4"), num_frames=16)
    cfg = config("ingest.input=videos", "ingest.output=data")
    lock = tmp_path / "data" / "_lock"
    with OutputLock(str(tmp_path / "data")):  # the first run, still going
        with pytest.raises(VidrayError) as caught:
            run_ingest(cfg)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{tmp_path / 'data'} is being ingested by another run (pid ")
        assert message.endswith(f"if that run is dead, delete {lock} and run again")
        assert sorted(p.name for p in Path("data").iterdir()) == ["_lock"]  # its lock, kept
    assert not lock.exists()

    (tmp_path / "bucket").mkdir()
    uri = (tmp_path / "bucket").as_uri()  # as an object store: a write if absent, read back
    with OutputLock(uri), pytest.raises(VidrayError, match=r"delete file://.*/_lock"):
        OutputLock(uri).acquire()
    assert not (tmp_path / "bucket" / "_lock").exists()


def test_the_lock_of_a_killed_run_is_taken_over_and_released_on_ctrl_c(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_video(Path("videos/a/v.mp4"), num_frames=16)
    killed = subprocess.Popen([sys.executable, "-c", ""])
    killed.wait()  # gone, as after kill -9: its lock stays
    Path("data").mkdir()
    Path("data/_lock").write_text(
        f'{{"pid": {killed.pid}, "host": "{socket.gethostname()}", "token": "x"}}'
    )

    def ctrl_c(run):
        assert json.loads(Path("data/_lock").read_text())["pid"] == os.getpid()
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_module._Run, "ingest_videos", ctrl_c)
    lines: list[str] = []
    with pytest.raises(Interrupted):
        run_ingest(config("ingest.input=videos", "ingest.output=data"), log=lines.append)
    assert f"ingest: {tmp_path / 'data' / '_lock'} was left by process {killed.pid}" in lines[0]
    assert not Path("data/_lock").exists()


def test_an_interrupt_whose_record_fails_is_still_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_video(Path("videos/a/v.mp4"), num_frames=16)

    def ctrl_c(run):
        raise KeyboardInterrupt

    def disk_full(output, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ingest_module._Run, "ingest_videos", ctrl_c)
    monkeypatch.setattr(ingest_module, "write_manifest", disk_full)
    with pytest.raises(Interrupted) as caught:
        run_ingest(config("ingest.input=videos", "ingest.output=data"), log=lambda line: None)
    assert str(caught.value) == (
        "interrupted; the manifest could not be updated (OSError: [Errno 28] No space left on "
        f"device), the finished segments are recorded in {tmp_path / 'data' / '_journal'}; run "
        "the same command again to continue"
    )
    assert not Path("data/_lock").exists()


def test_replace_deletes_a_dataset_whose_manifest_is_unreadable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_video(Path("videos/a/v.mp4"), num_frames=16)
    Path("data").mkdir()
    write_dataset_info("data", {"input": str(tmp_path / "elsewhere"), "layout": "folders"})
    Path("data/manifest.parquet").write_bytes(b"not parquet")  # a disk that filled up

    def ctrl_c(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_module._Run, "ingest_videos", ctrl_c)
    lines: list[str] = []
    cfg = config("ingest.input=videos", "ingest.output=data", "ingest.mode=replace")
    with pytest.raises(Interrupted):
        run_ingest(cfg, log=lines.append)
    assert (
        f"ingest: ingest.mode=replace: deleted the dataset in {tmp_path / 'data'} (its manifest "
        "was unreadable); starting it afresh"
    ) in lines
    assert read_manifest("data") == []
    assert read_dataset_info("data")["input"] == str(tmp_path / "videos")
