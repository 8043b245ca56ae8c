"""Everything on S3: videos in, shards, checkpoints and MLflow artifacts out, against a
local S3 server (moto's server mode) on 127.0.0.1. Credentials exist only in the
environment of the processes this test starts, as on a cluster with instance roles.

The pipelines run as `python -m pipelines.X` subprocesses, each with its own local Ray,
so their workers inherit that environment (the session's Ray was started without it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs
import pytest
import requests
from mlflow.tracking import MlflowClient
from mlflow_server import free_port, mlflow_server

REPO = Path(__file__).resolve().parents[1]
BUCKET = "vidray"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """The environment of a process that talks to the local S3 server (bucket made)."""
    tmp = tmp_path_factory.mktemp("s3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with (tmp / "moto.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(endpoint, timeout=2)
                    break
                except requests.RequestException:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto did not start: {tmp / 'moto.log'}") from None
                    time.sleep(0.3)
            env = {
                **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,  # pyarrow and boto3 both read it
                "MLFLOW_S3_ENDPOINT_URL": endpoint,
                "PYTHONPATH": str(REPO),
            }
            import boto3

            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            ).create_bucket(Bucket=BUCKET)
            yield env
        finally:
            server.terminate()
            server.wait(timeout=20)


def s3(env: dict[str, str]) -> pyarrow.fs.S3FileSystem:
    return pyarrow.fs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=env["AWS_ENDPOINT_URL"],
        region="us-east-1",
    )


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", *args, "ray.num_cpus=2"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_ingest_and_train_with_every_file_on_s3(s3_env, tmp_path):
    from vidray.data.synthetic import write_motion_dataset

    fs = s3(s3_env)
    local = tmp_path / "videos"
    write_motion_dataset(local, classes=2, videos_per_class=4, num_frames=24, seed=3)
    for path in sorted(local.rglob("*.mp4")):
        fs.create_dir(f"{BUCKET}/videos/{path.parent.name}")
        with fs.open_output_stream(f"{BUCKET}/videos/{path.parent.name}/{path.name}") as out:
            out.write(path.read_bytes())

    out = run(
        s3_env,
        "pipelines.ingest",
        f"--input=s3://{BUCKET}/videos",
        f"--output=s3://{BUCKET}/data",
        "ingest.short_side=64",
        "ingest.window_frames=16",
        "ingest.window_stride=8",
        "ingest.val_fraction=0.25",
        "flow.backend=none",
    )
    assert "8 ingested" in out.stdout, out.stdout
    stored = fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/data", recursive=True))
    names = {info.path.removeprefix(f"{BUCKET}/data/") for info in stored}
    assert {"manifest.parquet", "dataset.yaml"} <= names
    assert any(n.startswith("windows/") and n.endswith(".parquet") for n in names)

    with mlflow_server(tmp_path, artifacts=f"s3://{BUCKET}/mlflow", env=s3_env) as (uri, _):
        run(
            s3_env,
            "pipelines.train",
            f"--data=s3://{BUCKET}/data",
            "model.name=simple3d",
            "model.width=8",
            "clip.T=4",
            "clip.crop=48",
            "train.epochs=1",
            "train.workers=1",
            "train.cpus_per_worker=1",
            f"train.storage_path=s3://{BUCKET}/runs",
            "train.run_name=on-s3",
            f"mlflow.tracking_uri={uri}",
        )
        client = MlflowClient(tracking_uri=uri)
        (run_info,) = client.search_runs(
            experiment_ids=[e.experiment_id for e in client.search_experiments()],
            filter_string="attributes.run_name = 'on-s3'",
        )
        assert run_info.info.status == "FINISHED"
        artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
        assert {"config.yaml", "checkpoint"} <= artifacts

    runs = fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/runs", recursive=True))
    assert any(info.path.endswith("/state.pt") for info in runs)  # Ray Train's checkpoints
    logged = fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/mlflow", recursive=True))
    assert any(info.path.endswith("checkpoint/state.pt") for info in logged)

    # The trained checkpoint, read from S3, answers for the videos on S3.
    state = sorted(i.path for i in runs if i.path.endswith("/state.pt"))[-1]
    checkpoint = "s3://" + state.removesuffix("/state.pt")
    answers = tmp_path / "answers"
    run(
        s3_env,
        "pipelines.predict",
        f"--checkpoint={checkpoint}",
        f"--video=s3://{BUCKET}/videos/",
        f"--output={answers}",
    )
    rows = (answers / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 8 and all(f"s3://{BUCKET}/videos/" in r and ",ok," in r for r in rows)

    # An object the store does not have is a skipped row, not a failed job.
    listing = tmp_path / "list.csv"
    video = rows[0].split(",")[0]
    listing.write_text(f"path\n{video}\ns3://{BUCKET}/videos/gone.mp4\n")
    run(
        s3_env,
        "pipelines.predict",
        f"--checkpoint={checkpoint}",
        f"--video={listing}",
        f"--output={tmp_path / 'listed'}",
    )
    rows = (tmp_path / "listed" / "predictions.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [
        [f"s3://{BUCKET}/videos/gone.mp4", "skipped"],
        [video, "ok"],
    ]
