"""A classification checkpoint as an MLflow model: logged by `log_classifier` (and by
training with ``train.register_model``), loaded with ``mlflow.pyfunc.load_model`` (from
a run, from the registry of a real `mlflow server`), it answers what `predict_video`
answers for the same checkpoint and videos; a file that is not a video gets a row
with its error."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from test_s3 import BUCKET, s3, s3_env  # noqa: F401  (s3_env: a fixture)
from test_train import tiny_config
from untrained import save_untrained

from vidray import tracking
from vidray.config import load_config
from vidray.data.manifest import read_dataset_info
from vidray.data.synthetic import write_motion_dataset
from vidray.errors import VidrayError
from vidray.predict.classifier import WindowScorer, load_classifier, predict_video
from vidray.predict.pyfunc import checkpoint_of_model, log_classifier
from vidray.train import publish
from vidray.train.driver import run_training
from vidray.train.loop import build_model

TINY = ["model.name=simple3d", "model.width=8", "clip.T=4", "clip.stride=2", "clip.crop=48"]
OUTPUT = ["video", "label", "score", "top_labels", "top_scores", "error"]


@pytest.fixture(scope="module")
def checkpoint(motion_data, tmp_path_factory) -> Path:
    """An untrained classifier saved as training saves one, with its data's storage."""
    cfg = load_config(None, [*TINY, f"train.data={motion_data}"])
    info = read_dataset_info(motion_data)
    torch.manual_seed(0)
    model = build_model(cfg, len(info["classes"]))
    directory = tmp_path_factory.mktemp("pyfunc") / "checkpoint"
    return save_untrained(directory, model, cfg, info["classes"], dataset=info)


@pytest.fixture(scope="module")
def new_videos(tmp_path_factory) -> list[str]:
    """Videos the model never saw, 4.8 s each (3 windows of 1.6 s)."""
    root = tmp_path_factory.mktemp("new_videos")
    paths = write_motion_dataset(root, classes=4, videos_per_class=1, num_frames=48, seed=7)
    return [str(p) for p in sorted(paths)]


def expected(
    checkpoint: Path, videos: list[str], k: int, stride_s: float = 0.0, **views
) -> list[list[tuple[str, float]]]:
    """`predict_video`'s top ``k`` of each video."""
    scorer = WindowScorer(load_classifier(checkpoint), device=torch.device("cpu"), **views)
    return [predict_video(Path(v), scorer, stride_s=stride_s, video=v).top(k) for v in videos]


def assert_same_answers(found: pd.DataFrame, videos: list[str], answers) -> None:
    assert list(found.columns) == OUTPUT
    assert list(found["video"]) == videos
    for (_, row), top in zip(found.iterrows(), answers, strict=True):
        assert row["error"] == ""
        assert list(row["top_labels"]) == [label for label, _ in top]
        np.testing.assert_array_equal(row["top_scores"], [score for _, score in top])
        assert (row["label"], row["score"]) == top[0]


def new_run(uri: str, artifacts: Path | None = None) -> str:
    client = MlflowClient(tracking_uri=uri)
    location = {"artifact_location": str(artifacts)} if artifacts else {}
    experiment = client.create_experiment("pyfunc", **location)
    return client.create_run(experiment).info.run_id


@pytest.mark.slow
def test_the_logged_model_answers_what_predict_video_does(
    checkpoint, new_videos, motion_data, tmp_path, monkeypatch
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = new_run(uri, tmp_path / "artifacts")
    model_uri = log_classifier(uri, run_id, checkpoint)
    assert model_uri == f"runs:/{run_id}/model"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(model_uri)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    videos = [*new_videos, str(empty), str(tmp_path / "missing.mp4")]
    found = model.predict(pd.DataFrame({"video": videos}))

    assert_same_answers(found.iloc[:4], new_videos, expected(checkpoint, new_videos, 5))
    errors = found.iloc[4:]
    assert list(errors["label"]) == ["", ""] and errors["score"].isna().all()
    assert list(errors["error"]) == ["empty file (0 bytes)", "file not found"]
    assert all(len(labels) == 0 for labels in errors["top_labels"])

    views = {"temporal_views": 2, "spatial_views": 3}
    two = model.predict(pd.DataFrame({"video": new_videos[:2]}), params={"top_k": 2, **views})
    assert_same_answers(two, new_videos[:2], expected(checkpoint, new_videos[:2], 2, **views))
    assert list(two["score"]) != list(found["score"].iloc[:2])  # 6 views are not 1
    strided = model.predict(pd.DataFrame({"video": new_videos[:2]}), params={"stride_s": 0.5})
    assert_same_answers(strided, new_videos[:2], expected(checkpoint, new_videos[:2], 5, 0.5))
    assert list(strided["score"]) != list(found["score"].iloc[:2])  # more windows

    local = checkpoint_of_model(model_uri, uri=uri, dst=tmp_path / "downloaded")
    assert load_classifier(local).classes == load_classifier(checkpoint).classes

    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["video"]
    assert signature.inputs.input_types()[0].name == "string"
    assert signature.outputs.input_names() == OUTPUT
    assert {p.name: p.default for p in signature.params.params} == {
        "top_k": 5,
        "stride_s": 0.0,
        "temporal_views": 1,
        "spatial_views": 1,
    }
    info = read_dataset_info(motion_data)
    inside = model.metadata.metadata["vidray"]
    assert inside["classes"] == info["classes"] and inside["storage"] == info["storage"]
    assert inside["task"] == "classify" and inside["model"] == "simple3d"


@pytest.mark.slow
def test_a_model_registered_on_an_mlflow_server_loads_by_name_and_version(
    checkpoint, new_videos, tmp_path, monkeypatch
):
    with mlflow_server(tmp_path) as (uri, _):
        run_id = new_run(uri)
        assert log_classifier(uri, run_id, checkpoint, register_as="motion") == "models:/motion/1"
        assert log_classifier(uri, run_id, checkpoint, register_as="motion") == "models:/motion/2"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        model = mlflow.pyfunc.load_model("models:/motion/1")
        found = model.predict(pd.DataFrame({"video": new_videos}))
        assert_same_answers(found, new_videos, expected(checkpoint, new_videos, 5))

        # The serve helper's way in: the checkpoint itself, byte for byte.
        local = checkpoint_of_model("models:/motion/1", uri=uri, dst=tmp_path / "downloaded")
        for name in ("state.pt", "meta.yaml"):
            assert (local / name).read_bytes() == (checkpoint / name).read_bytes()
        with pytest.raises(VidrayError, match=r"MLflow model models:/motion/9 cannot be read"):
            checkpoint_of_model("models:/motion/9", uri=uri, dst=tmp_path / "nine")


@pytest.mark.slow
def test_training_with_register_model_registers_the_best_checkpoint(
    ray_local, motion_data, new_videos, tmp_path, monkeypatch
):
    cfg = tiny_config(
        motion_data,
        tmp_path,
        "train.epochs=1",
        "train.workers=1",
        "train.cpus_per_worker=1",
        "train.register_model=motion-tiny",
    )
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root, ./mlruns, goes here
    result = run_training(cfg)

    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.MODEL_URI_TAG] == "models:/motion-tiny/1"
    assert {"checkpoint", "model"} <= {a.path for a in client.list_artifacts(result.run_id)}
    version = client.get_model_version("motion-tiny", "1")
    assert version.run_id == result.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", result.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/motion-tiny/1")
    found = model.predict(pd.DataFrame({"video": new_videos[:2]}))
    assert_same_answers(found, new_videos[:2], expected(Path(result.checkpoint), new_videos[:2], 5))


@pytest.mark.slow
def test_a_model_that_cannot_be_logged_costs_a_warning_not_the_run(checkpoint, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = new_run(uri, tmp_path / "artifacts")
    # The registry refuses the name: the model is logged, not registered; nothing raises.
    assert publish.log_model("classify", uri, run_id, checkpoint, "bad/name") == ""
    # (MLflow writes its own lines, progress bars among them, to stderr too.)
    warning = [line for line in capsys.readouterr().err.splitlines() if "train: " in line]
    assert len(warning) == 1 and warning[0].startswith("train: warning: the MLflow model was not")
    assert "'bad/name'" in warning[0] and "cannot contain '/'" in warning[0]
    # Not a checkpoint: nothing is logged, the run is as it was.
    assert publish.log_model("classify", uri, run_id, tmp_path, "") == ""
    assert "is not a vidray checkpoint" in capsys.readouterr().err
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert tracking.MODEL_URI_TAG not in run.data.tags and run.info.status == "RUNNING"
    # A checkpoint the model could not load is refused when logged, not when loaded.
    older = shutil.copytree(checkpoint, tmp_path / "older")
    meta = yaml.safe_load((older / "meta.yaml").read_text())
    (older / "meta.yaml").write_text(yaml.safe_dump({**meta, "dataset": {}}))
    with pytest.raises(VidrayError, match=r"older does not record its training data's storage"):
        log_classifier(uri, run_id, older)


@pytest.mark.slow
def test_videos_given_as_s3_uris_are_answered_as_local_ones(
    checkpoint,
    new_videos,
    s3_env,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3_env[key])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
    fs = s3(s3_env)
    uris = []
    for path in map(Path, new_videos[:2]):
        with fs.open_output_stream(f"{BUCKET}/new/{path.name}") as out:
            out.write(path.read_bytes())
        uris.append(f"s3://{BUCKET}/new/{path.name}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_uri = log_classifier(uri, new_run(uri, tmp_path / "artifacts"), checkpoint)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(model_uri)

    found = model.predict(pd.DataFrame({"video": [*uris, f"s3://{BUCKET}/new/missing.mp4"]}))
    answers = expected(checkpoint, new_videos[:2], 5)
    assert_same_answers(found.iloc[:2], uris, answers)
    assert found["label"].iloc[2] == "" and found["error"].iloc[2]
