"""Multi-node: a head and two worker nodes (ray.cluster_utils.Cluster); the two
train workers land on different nodes and train from shared storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_train_workers_run_on_two_nodes(motion_data, tmp_path):
    # Its own process: this session's Ray is a single node, and a process has one Ray.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "multinode_train.py"),
            str(motion_data),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    nodes = {(tmp_path / f"rank{r}.node").read_text() for r in (0, 1)}
    assert len(nodes) == 2 and result["head"] not in nodes
    checksums = {(tmp_path / f"rank{r}.checksum").read_text() for r in (0, 1)}
    assert len(checksums) == 1  # DDP across nodes kept the replicas equal
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(result["run_id"])
    assert run.info.status == "FINISHED" and "val/video_top1" in run.data.metrics
