"""Shards that the manifest names but that are gone or damaged (a partial copy to a
bucket, a bad disk): every reader says which file and how to repair it, training
and sweeps end with that one line, and the advice in it works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import ray

from vidray.cli import run_command
from vidray.config import ClipConfig, load_config
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest, window_files
from vidray.data.reading import iter_clip_batches
from vidray.errors import VidrayError, user_error

CLIP = ClipConfig(T=4, stride=2, crop=48)


def damaged_copy(data: Path, tmp_path: Path, split: str = "val") -> tuple[Path, Path]:
    """A copy of ``data`` with one ``split`` shard cut to its first kilobyte."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shard = Path(window_files(copy, split=split)[0])
    shard.write_bytes(shard.read_bytes()[:1024])
    return copy, shard


def test_a_truncated_shard_is_an_error_naming_it(motion_data, tmp_path):
    data, shard = damaged_copy(motion_data, tmp_path)
    with pytest.raises(VidrayError, match=rf"damaged window shard {shard}.*vidray ingest"):
        list(iter_clip_batches(data, split="val", clip=CLIP, flow_L=0))


def test_a_missing_shard_is_an_error_naming_it(motion_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(motion_data, data)
    shard = Path(window_files(data, split="train")[-1])
    shard.unlink()
    with pytest.raises(VidrayError, match=rf"missing window shard {shard}"):
        list(iter_clip_batches(data, split="train", clip=CLIP, flow_L=0))


def test_an_unreadable_shard_says_to_check_access_before_deleting_it(motion_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(motion_data, data)
    shard = Path(window_files(data, split="val")[0])
    shard.unlink()
    shard.mkdir()  # opening it fails in the storage layer, not in Parquet
    with pytest.raises(VidrayError, match=rf"cannot read window shard {shard}.*check access"):
        list(iter_clip_batches(data, split="val", clip=CLIP, flow_L=0))


class ShardGone(VidrayError):
    """A user error of a type defined outside vidray.errors."""


def test_the_users_mistake_is_found_inside_rays_wrapped_errors(ray_local):
    @ray.remote
    def fails() -> None:
        raise VidrayError("the one line")

    with pytest.raises(Exception) as caught:
        ray.get(fails.remote())
    assert type(caught.value) is not VidrayError  # Ray's wrapper, with a traceback in it
    found = user_error(caught.value)
    assert type(found) is VidrayError and str(found) == "the one line"
    assert user_error(RuntimeError("a bug")) is None
    try:
        raise RuntimeError("a wrapper") from ShardGone("gone")
    except RuntimeError as wrapped:
        assert isinstance(user_error(wrapped), ShardGone)


@pytest.mark.slow
def test_training_on_a_damaged_shard_exits_2_with_one_line_naming_it(
    ray_local, motion_data, tmp_path, capsys
):
    data, shard = damaged_copy(motion_data, tmp_path)
    code = run_command(
        "train",
        [
            "model.name=simple3d",
            "model.width=8",
            "clip.T=4",
            "clip.stride=2",
            "clip.crop=48",
            "train.epochs=1",
            "train.workers=1",
            "train.max_failures=0",
            f"train.data={data}",
            f"train.storage_path={tmp_path / 'runs'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ],
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("vidray train: error: damaged window")
    assert str(shard) in errors[0]


def test_deleting_a_damaged_shard_and_ingesting_again_repairs_the_data(
    ray_local, motion_videos, motion_data, tmp_path
):
    data, shard = damaged_copy(motion_data, tmp_path, split="train")
    in_shard = [r for r in read_manifest(data) if shard.name in r["shards"]]
    assert len(in_shard) > 1  # shards are packed: the repair re-ingests each of these
    shard.unlink()
    cfg = load_config(
        None,
        [
            f"ingest.input={motion_videos}",
            f"ingest.output={data}",
            "ingest.short_side=64",
            "ingest.window_frames=16",
            "ingest.window_stride=16",
        ],
    )
    summary = run_ingest(cfg, log=lambda line: None)
    assert summary.ingested == len(in_shard)
    assert summary.skipped == len(read_manifest(data)) - len(in_shard)
    assert all(Path(f).exists() for f in window_files(data))
    clips = sum(
        len(b["label"]) for b in iter_clip_batches(data, split="train", clip=CLIP, flow_L=0)
    )
    assert clips == sum(r["n_windows"] for r in read_manifest(data) if r["split"] == "train")
