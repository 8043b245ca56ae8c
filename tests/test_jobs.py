"""Pipelines as Ray jobs: a real `ray start --head` on 127.0.0.1 with its own ports and
temp dir, jobs submitted with JobSubmissionClient and a working_dir runtime env, as
`ray job submit --working-dir . -- python -m pipelines.X` does on a cluster. The test
stops only the Ray it started (its process group), never the session's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

REPO = Path(__file__).resolve().parents[1]
PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)
DONE = ("SUCCEEDED", "FAILED", "STOPPED")
pytestmark = pytest.mark.slow  # each test needs a Ray head of its own


@pytest.fixture(scope="module")
def job_client(tmp_path_factory):
    """A JobSubmissionClient of a head node this fixture starts and stops."""
    tmp = tmp_path_factory.mktemp("ray_head")
    # Ray's socket paths live under the temp dir and must stay under 108 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    ports = {name: free_port() for name in PORTS}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Jobs run `python`: the one of this environment, as on a cluster set up by cluster.yaml.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    ray = Path(sys.executable).parent / "ray"
    command = [
        str(ray),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={ray_tmp}",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = (tmp / "head.log").open("w")
    head = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    old_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # the client sends the token `ray start` wrote
    try:
        from ray.job_submission import JobSubmissionClient

        address = f"http://127.0.0.1:{ports['dashboard-port']}"
        deadline = time.monotonic() + 120
        while True:
            try:
                client = JobSubmissionClient(address)
                client.list_jobs()
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray head did not start: {tmp / 'head.log'}") from None
                time.sleep(1)
        yield client
    finally:
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        os.killpg(head.pid, signal.SIGKILL)  # what draining left behind
        head.wait()
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_job(client, entrypoint: str, timeout: float = 400) -> tuple[str, str]:
    """Submit ``entrypoint`` with this repository as the working dir; (status, logs)."""
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)})
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(job).value)) not in DONE:
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(f"job {entrypoint!r} still {status} after {timeout} s")
        time.sleep(1)
    return status, client.get_job_logs(job)


@pytest.mark.slow
def test_ingest_and_train_jobs_succeed_on_the_cluster(job_client, tmp_path):
    from vidray.data.synthetic import write_motion_dataset

    write_motion_dataset(tmp_path / "videos", classes=4, videos_per_class=3, num_frames=24)
    data, uri = tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}"
    status, logs = run_job(
        job_client,
        f"python -m pipelines.ingest --input {tmp_path / 'videos'} --output {data} "
        "ingest.short_side=64 ingest.window_frames=16 ingest.window_stride=8 flow.backend=none",
    )
    assert status == "SUCCEEDED", logs[-3000:]
    assert "12 ingested" in logs and (data / "manifest.parquet").is_file()
    # The job joined the running cluster instead of starting a Ray of its own.
    assert "Started a local Ray instance" not in logs
    status, logs = run_job(
        job_client,
        f"python -m pipelines.train --data {data} model.name=simple3d model.width=8 clip.T=4 "
        "clip.crop=48 train.epochs=1 train.workers=1 train.cpus_per_worker=1 "
        f"train.storage_path={tmp_path / 'runs'} mlflow.tracking_uri={uri} "
        "train.run_name=from-a-job",
    )
    assert status == "SUCCEEDED", logs[-3000:]
    (run,) = MlflowClient(tracking_uri=uri).search_runs(
        experiment_ids=[
            e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()
        ],
        filter_string="attributes.run_name = 'from-a-job'",
    )
    assert run.info.status == "FINISHED" and "val/video_top1" in run.data.metrics


def test_a_failing_pipeline_job_is_failed_with_its_one_line_reason(job_client, tmp_path):
    status, logs = run_job(job_client, f"python -m pipelines.train --data {tmp_path} clip.TT=8")
    assert status == "FAILED"
    assert "error: config: unknown key 'clip.TT' (did you mean 'clip.T'?)" in logs
    assert "Traceback" not in logs
