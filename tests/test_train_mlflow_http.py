"""Training against an `mlflow server` over HTTP, as on a cluster: the test starts a
real server on 127.0.0.1 with its own SQLite store and artifact root, and reads
everything back through MlflowClient."""

from __future__ import annotations

from pathlib import Path

import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server as running_server
from test_train import tiny_config

from vidray.train.driver import run_training


@pytest.fixture
def mlflow_server(tmp_path):
    with running_server(tmp_path) as server:
        yield server


@pytest.mark.slow
def test_training_logs_to_an_mlflow_server_over_http(
    ray_local, motion_data, tmp_path, mlflow_server
):
    uri, artifact_root = mlflow_server
    cfg = tiny_config(
        motion_data,
        tmp_path,
        "train.epochs=1",
        "train.run_name=http-run",
        f"mlflow.tracking_uri={uri}",
    )
    result = run_training(cfg)
    assert result.tracking_uri == uri

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "http-run"
    assert run.data.params["model.name"] == "simple3d"
    assert run.data.params["mlflow.tracking_uri"] == uri
    assert float(run.data.params["ray.cpus"]) == 2
    assert [m.step for m in client.get_metric_history(result.run_id, "val/video_top1")] == [1]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "checkpoint"} <= artifacts
    # Artifacts went through the server's proxy into its own artifact root.
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="config.yaml", tracking_uri=uri, dst_path=str(tmp_path)
    )
    assert "simple3d" in Path(local).read_text()
    assert any(p.name == "state.pt" for p in Path(artifact_root).rglob("state.pt"))
