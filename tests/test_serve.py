"""`vidray serve`: the Ray Serve application over real HTTP on 127.0.0.1, inside the
session's local Ray. One application serves the whole module (Serve's start-up costs
seconds); its limits are small so hostile requests are cheap to make."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import REPO, as_from_a_terminal, run_module
from mlflow import MlflowClient
from untrained import save_untrained

from vidray.config import load_config
from vidray.data.manifest import read_dataset_info
from vidray.data.synthetic import write_motion_dataset
from vidray.predict.classifier import WindowScorer, load_classifier, predict_video
from vidray.predict.pyfunc import log_classifier
from vidray.serve.app import start_serve, stop_serve
from vidray.train.loop import build_model

TINY = ["model.name=simple3d", "model.width=8", "clip.T=4", "clip.stride=2", "clip.crop=48"]
MAX_UPLOAD_MB = 0.25
MAX_DURATION_S = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(motion_data, tmp_path_factory) -> Path:
    cfg = load_config(None, [*TINY, f"train.data={motion_data}"])
    info = read_dataset_info(motion_data)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("serve") / "checkpoint"
    save_untrained(
        directory, build_model(cfg, len(info["classes"])), cfg, info["classes"], dataset=info
    )
    return directory


@pytest.fixture(scope="module")
def served(ray_local, checkpoint):
    """The predict URL of an application on a free port of 127.0.0.1, stopped afterwards."""
    cfg = load_config(
        None,
        [
            f"serve.checkpoint={checkpoint}",
            f"serve.port={free_port()}",
            f"serve.max_upload_mb={MAX_UPLOAD_MB}",
            f"serve.max_duration_s={MAX_DURATION_S}",
            "serve.top_k=3",
        ],
    )
    url = start_serve(cfg).predict_url
    yield url
    stop_serve()


@pytest.fixture(scope="module")
def expected(checkpoint, motion_videos):
    """predict_video's answer (top 3) for one video of each class, in-process."""
    scorer = WindowScorer(load_classifier(checkpoint), device=torch.device("cpu"))
    paths = [sorted(folder.glob("*.mp4"))[0] for folder in sorted(motion_videos.iterdir())]
    return {path: predict_video(path, scorer, video=path.name).to_dict(3) for path in paths}


def post(url: str, body: bytes, content_type: str, method: str = "POST") -> tuple[int, dict]:
    """(status, JSON answer) of one request."""
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_chunked(url: str, chunks: list[bytes]) -> tuple[int, dict]:
    """A body sent in chunks, with no Content-Length: its size shows only as it streams."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        headers = {"Content-Type": "video/mp4"}
        connection.request(
            "POST", parts.path, body=iter(chunks), headers=headers, encode_chunked=True
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def upload(url: str, data: bytes, filename: str = "clip.mp4", field: str = "file"):
    boundary = "vidray-test-boundary-7f3a"
    body = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode(),
            b"Content-Type: video/mp4\r\n\r\n",
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    return post(url, body, f"multipart/form-data; boundary={boundary}")


def assert_same_answer(found: dict, wanted: dict) -> None:
    """Equal labels in the same order, scores and window times equal to float noise (the
    model batches windows of several requests together, which may round differently)."""
    assert found["video"] == wanted["video"]
    assert [t["label"] for t in found["top"]] == [t["label"] for t in wanted["top"]]
    np.testing.assert_allclose(
        [t["score"] for t in found["top"]], [t["score"] for t in wanted["top"]], rtol=1e-5
    )
    assert len(found["timeline"]) == len(wanted["timeline"])
    for got, want in zip(found["timeline"], wanted["timeline"], strict=True):
        assert (got["start_s"], got["end_s"]) == pytest.approx((want["start_s"], want["end_s"]))
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]


def test_an_uploaded_video_gets_the_answer_predict_video_gives(served, expected):
    for path, wanted in expected.items():
        status, answer = upload(served, path.read_bytes(), filename=path.name)
        assert status == 200, answer
        assert_same_answer(answer, wanted)
        assert len(answer["top"]) == 3 and len(answer["timeline"]) == 2
    path, wanted = next(iter(expected.items()))
    status, answer = upload(served + "?top_k=1", path.read_bytes(), filename=path.name)
    assert status == 200, answer
    assert [t["label"] for t in answer["top"]] == [wanted["top"][0]["label"]]


def test_a_uri_request_reads_the_video_it_names(served, expected):
    path, wanted = next(iter(expected.items()))
    status, answer = post(served, json.dumps({"uri": str(path)}).encode(), "application/json")
    assert status == 200, answer
    assert_same_answer(answer, {**wanted, "video": str(path)})
    missing = json.dumps({"uri": str(path.with_name("nothing.mp4"))}).encode()
    status, answer = post(served, missing, "application/json")
    assert status == 400 and "no such file" in answer["error"]
    relative = json.dumps({"uri": "videos/clip.mp4"}).encode()
    assert post(served, relative, "application/json")[0] == 400


def test_concurrent_requests_get_the_answers_of_sequential_ones(served, expected):
    jobs = [path for path in expected for _ in range(3)]  # 12 requests at once
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda p: upload(served, p.read_bytes(), p.name), jobs))
    for path, (status, answer) in zip(jobs, answers, strict=True):
        assert status == 200, answer
        assert_same_answer(answer, expected[path])


def test_hostile_requests_get_a_4xx_with_a_json_error_and_serving_goes_on(
    served, expected, tmp_path
):
    good = next(iter(expected))
    video = good.read_bytes()
    long_video = write_motion_dataset(
        tmp_path / "long", classes=1, videos_per_class=1, num_frames=int(MAX_DURATION_S * 12)
    )[0]
    root = served.removesuffix("/predict")
    cases = {
        "text upload": (upload(served, b"hello, this is not a video\n" * 40), 422),
        "text body": (post(served, b"not a video", "text/plain"), 422),
        "zero-byte upload": (upload(served, b""), 422),
        "truncated mp4": (upload(served, video[: len(video) // 2]), 422),
        "oversized upload": (upload(served, np.random.bytes(int(MAX_UPLOAD_MB * 2**20))), 413),
        "oversized, streamed": (post_chunked(served, [np.random.bytes(2**16)] * 6), 413),
        "too long a video": (upload(served, long_video.read_bytes(), "long.mp4"), 422),
        "empty body": (post(served, b"", "application/octet-stream"), 400),
        "form without a file": (upload(served, video, field="notes", filename=""), 400),
        "JSON without a uri": (post(served, b'{"url": "x"}', "application/json"), 400),
        "broken JSON": (post(served, b'{"uri": ', "application/json"), 400),
        "bad top_k": (upload(served + "?top_k=zero", video), 400),
        "unknown route": (post(root + "/predictions", video, "video/mp4"), 404),
        "GET /predict": (post(served, None, "text/plain", method="GET"), 405),
    }
    for name, ((status, answer), wanted) in cases.items():
        assert status == wanted, (name, answer)
        assert set(answer) == {"error"} and "\n" not in answer["error"], (name, answer)
    assert "serve.max_upload_mb" in cases["oversized upload"][0][1]["error"]
    assert "serve.max_duration_s" in cases["too long a video"][0][1]["error"]
    status, answer = upload(served, video, filename=good.name)
    assert status == 200
    assert_same_answer(answer, expected[good])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--checkpoint", "no/such/checkpoint"], "no/such/checkpoint"),
        (["--model", "models:/nothing/1"], "models:/nothing/1"),
        (["--checkpoint", "ckpt", "--model", "models:/nothing/1"], "needs one of --checkpoint"),
    ],
)
def test_a_bad_checkpoint_or_model_is_a_one_line_error_before_serve_starts(args, named, tmp_path):
    result = run_module("vidray.cli", "serve", *args, cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if "serve" in line]
    assert len(lines) == 1 and lines[0].startswith("vidray serve: error:"), result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr and not result.stdout


def test_vidray_serve_serves_until_ctrl_c_and_then_stops_serve(checkpoint, expected, tmp_path):
    """The command as a user types it (a relative --checkpoint, in its own local Ray):
    it prints the URL, answers, and on Ctrl-C shuts Serve down and exits 0."""
    (tmp_path / "ckpt").symlink_to(checkpoint)
    port = free_port()
    command = [sys.executable, "-m", "vidray.cli", "serve", "--checkpoint", "ckpt"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "ray.num_cpus=2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal,
    )
    try:
        printed = [process.stdout.readline() for _ in range(3)]  # once the app answers
        assert printed[0].startswith(f"vidray serve: http://127.0.0.1:{port}/predict"), printed
        assert printed[1].strip().startswith("curl -F file=@VIDEO.mp4"), printed
        path, wanted = next(iter(expected.items()))
        url = f"http://127.0.0.1:{port}/predict?top_k=3"
        status, answer = upload(url, path.read_bytes(), filename=path.name)
        assert status == 200, answer
        assert_same_answer(answer, wanted)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "vidray serve: stopping" in out
    assert "Traceback" not in err


def test_an_mlflow_model_is_served_by_its_uri(checkpoint, expected, tmp_path):
    """Last in the module: a Ray holds one Serve, so this stops the module's application
    (its fixture's teardown then finds Serve stopped) and serves the model registered
    in the SQLite store it names (not in MLflow's default registry)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("serve", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    model_uri = log_classifier(uri, run_id, checkpoint, register_as="motion")
    assert model_uri == "models:/motion/1"
    stop_serve()
    overrides = [f"serve.model={model_uri}", f"mlflow.tracking_uri={uri}"]
    url = start_serve(load_config(None, [*overrides, f"serve.port={free_port()}"])).predict_url
    try:
        path, wanted = next(iter(expected.items()))
        status, answer = upload(url + "?top_k=3", path.read_bytes(), filename=path.name)
        assert status == 200, answer
        assert_same_answer(answer, wanted)
    finally:
        stop_serve()
