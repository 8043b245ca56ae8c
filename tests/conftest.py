"""Shared fixtures: one local Ray for the whole session (ray.init costs seconds), and a
small ingested motion dataset that loader and training tests read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not write a tracking DB into the repo or pick up a user's server.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from vidray.config import RayConfig
    from vidray.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def motion_videos(tmp_path_factory) -> Path:
    from vidray.data.synthetic import write_motion_dataset

    root = tmp_path_factory.mktemp("motion") / "videos"
    write_motion_dataset(root, classes=4, videos_per_class=6, num_frames=32, seed=1)
    return root


@pytest.fixture(scope="session")
def motion_data(ray_local, motion_videos, tmp_path_factory) -> Path:
    """The motion dataset ingested with small windows (16 frames at 10 fps, short side 64)."""
    from vidray.config import load_config
    from vidray.data.ingest import run_ingest

    output = tmp_path_factory.mktemp("motion_data")
    cfg = load_config(
        None,
        [
            f"ingest.input={motion_videos}",
            f"ingest.output={output}",
            "ingest.short_side=64",
            "ingest.window_frames=16",
            "ingest.window_stride=16",
        ],
    )
    summary = run_ingest(cfg, log=lambda line: None)
    assert summary.quarantined == 0
    return output


def pytest_collection_modifyitems(items):
    """A test that needs Ray (its start-up alone is seconds) is slow, whether it asks
    for the session's Ray itself or through a fixture built on it (motion_data)."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
