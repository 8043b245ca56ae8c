"""Shards packed with the windows of many videos: a video leaving one (changed, pruned,
re-ingested after its shard was deleted) leaves no window a reader would return, and
the manifest counts each shard's windows exactly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from media import SMALL, make_video

from vidray.config import load_config
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest, split_shards


def ingest(*overrides: str):
    cfg = load_config(
        None,
        ["ingest.input=videos", "ingest.output=data", "ingest.val_fraction=0", *SMALL, *overrides],
    )
    return run_ingest(cfg, log=lambda line: None)


def stored() -> dict[str, Counter]:
    """Shard -> windows of each video in it, as read from the files."""
    return {
        shard.name: Counter(pq.read_table(shard, columns=["video_id"])["video_id"].to_pylist())
        for shard in sorted(Path("data/windows").glob("*.parquet"))
    }


def claimed() -> dict[str, Counter]:
    """Shard -> windows of each video in it, as the manifest says."""
    shards: dict[str, Counter] = {}
    for row in read_manifest("data"):
        if row["status"] == "ok":
            for shard, n in zip(row["shards"], row["shard_windows"], strict=True):
                shards.setdefault(shard, Counter())[row["video_id"]] = n
    return shards


def test_shared_shards_keep_only_the_windows_the_manifest_names(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(8):  # one window each: 8 windows, 2 tasks a CPU -> 2 videos a shard
        make_video(Path(f"videos/walk/v{i}.mp4"), num_frames=8)
    ingest()
    first = stored()
    assert first == claimed() and len(first) == 4
    assert {sum(c.values()) for c in first.values()} == {2}
    assert sorted(split_shards("data", split="train")) == sorted(
        (str(Path("data/windows") / shard), 2) for shard in first
    )

    # a changed file: re-ingested; the other video of its old shard keeps its window
    make_video(Path("videos/walk/v0.mp4"), num_frames=16)
    assert ingest().ingested == 1
    assert stored() == claimed()
    assert sum(c["walk/v0"] for c in stored().values()) == 2

    # a deleted file, pruned: gone from every shard, its shard partner kept
    (partner,) = set(next(c for c in stored().values() if "walk/v5" in c)) - {"walk/v5"}
    Path("videos/walk/v5.mp4").unlink()
    assert ingest().gone == 1 and ingest("ingest.mode=prune").pruned
    assert stored() == claimed()
    assert all("walk/v5" not in c for c in stored().values())
    assert sum(sum(c.values()) for c in stored().values()) == 8  # 2 + 6 others
    assert sum(c[partner] for c in stored().values()) == 1

    # a damaged shard deleted: every video in it is ingested again, the rest untouched
    victim = next(name for name, c in stored().items() if len(c) == 2)
    untouched = {n: Path("data/windows", n).stat().st_mtime_ns for n in stored() if n != victim}
    Path("data/windows", victim).unlink()
    assert ingest().ingested == 2
    assert stored() == claimed()
    assert {n: Path("data/windows", n).stat().st_mtime_ns for n in untouched} == untouched
    assert not any(Path("data").glob("_*"))  # no journal, scratch or lock left
