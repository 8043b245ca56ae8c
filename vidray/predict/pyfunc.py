"""A classification checkpoint as an MLflow model (``mlflow.pyfunc``), so MLflow, its
model registry and anything that loads pyfunc models can use it without vidray's CLI.

The model is the checkpoint directory itself, as the pyfunc artifact ``checkpoint``,
with a `VideoClassifierModel` that loads it as `vidray predict` does; the class names
and the training data's storage parameters are in the model's metadata (``MLmodel``),
readable without loading anything:

    log_classifier(uri, run_id, checkpoint)
      -> <run>/model: MLmodel (signature, metadata), python_model.pkl,
                      artifacts/checkpoint/ (state.pt, meta.yaml)
      -> models:/NAME/VERSION when registered
    mlflow.pyfunc.load_model(uri).predict(DataFrame({"video": [paths or URIs]}))
      -> one row per video: video, label, score, top_labels, top_scores, error

An answer is `predict_video(...).top(k)` of the same checkpoint and video: the same
windows, the same scorer. A video that cannot be read gets a row with its error, not
an exception, so one bad file does not lose the others' answers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from vidray import storage, tracking
from vidray.checkpoints import META_FILE
from vidray.config import PredictConfig
from vidray.errors import VidrayError
from vidray.predict.classifier import WindowScorer, load_classifier, predict_video
from vidray.train.publish import register_model_logger

# The params' defaults are `vidray predict`'s (predict.top_k, .stride_s, .*_views).
_PREDICT = PredictConfig()

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, "video")]),
    outputs=Schema(
        [
            ColSpec(DataType.string, "video"),
            ColSpec(DataType.string, "label"),  # top-1; "" where ``error`` is set
            ColSpec(DataType.double, "score"),  # its probability; NaN where ``error`` is set
            ColSpec(Array(DataType.string), "top_labels"),  # top-k, most likely first
            ColSpec(Array(DataType.double), "top_scores"),
            ColSpec(DataType.string, "error"),  # "" for a video that was scored
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("top_k", DataType.long, _PREDICT.top_k),
            # seconds between windows (0: the training data's window stride)
            ParamSpec("stride_s", DataType.double, _PREDICT.stride_s),
            # clips per window, crops per clip (as eval.temporal_views / spatial_views)
            ParamSpec("temporal_views", DataType.long, _PREDICT.temporal_views),
            ParamSpec("spatial_views", DataType.long, _PREDICT.spatial_views),
        ]
    ),
)
DEFAULTS = {spec.name: spec.default for spec in SIGNATURE.params.params}


class VideoClassifierModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a classification checkpoint: a table of videos in, their top-k
    classes out. On a GPU where the loading machine has one, else on CPU."""

    def load_context(self, context: Any) -> None:
        self.classifier = load_classifier(context.artifacts[tracking.MODEL_CHECKPOINT_ARTIFACT])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.scorers: dict[tuple[int, int], WindowScorer] = {}  # per (temporal, spatial) views

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One row per video of the ``video`` column (local paths or URIs)."""
        params = {**DEFAULTS, **(params or {})}
        top_k = int(params["top_k"])
        if top_k < 1:
            raise VidrayError(f"top_k={top_k}: ask for 1 or more classes")
        views = (int(params["temporal_views"]), int(params["spatial_views"]))
        if views not in self.scorers:
            self.scorers[views] = WindowScorer(
                self.classifier, device=self.device, temporal_views=views[0], spatial_views=views[1]
            )
        scorer, stride_s = self.scorers[views], float(params["stride_s"])
        rows = [_answer(scorer, str(video), top_k, stride_s) for video in model_input["video"]]
        return pd.DataFrame(rows, columns=[spec.name for spec in SIGNATURE.outputs.inputs])


def _answer(scorer: WindowScorer, video: str, top_k: int, stride_s: float) -> dict[str, Any]:
    """The row of one video: its top ``top_k``, or the one-line reason it has none (as
    `vidray predict` gives it: without the file's name, which the row has; a remote
    video's is that of its temporary copy)."""
    local = video
    try:
        with storage.local_file(video) as path:
            local = str(path)
            top = predict_video(path, scorer, stride_s=stride_s, video=video).top(top_k)
    except (VidrayError, OSError) as exc:  # a file that is not there, or not a video
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason.removeprefix(f"{local}: ").removeprefix(f"{video}: ")
        return {
            "video": video,
            "label": "",
            "score": np.nan,
            "top_labels": [],
            "top_scores": [],
            "error": reason,
        }
    return {
        "video": video,
        "label": top[0][0],
        "score": top[0][1],
        "top_labels": [label for label, _ in top],
        "top_scores": [score for _, score in top],
        "error": "",
    }


def model_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model's user reads in its ``MLmodel`` without loading it: the classes, in
    the model's output order, the training data's storage parameters, the network."""
    config = meta.get("config") or {}
    return {
        "vidray": {
            "task": "classify",
            "model": (config.get("model") or {}).get("name", ""),
            "classes": list(meta["classes"]),
            "storage": (meta.get("dataset") or {}).get("storage", {}),
            "clip": config.get("clip", {}),
            "epoch": meta.get("epoch"),
            "run_id": meta.get("run_id", ""),
        }
    }


def log_classifier(
    uri: str, run_id: str, checkpoint_dir: str | Path, *, register_as: str = ""
) -> str:
    """Log the classification checkpoint ``checkpoint_dir`` as an MLflow model under the
    run's artifact path ``model``; its URI, ``runs:/<run_id>/model``, or with
    ``register_as`` a new version of that registered model, ``models:/NAME/VERSION``.

    The model is written locally and logged as run artifacts through the client of
    ``uri``: nothing touches MLflow's global tracking URI or active run, which the
    caller (a training driver, a Tune trial) may be using for something else.
    """
    with storage.local_dir(checkpoint_dir) as local, tempfile.TemporaryDirectory() as tmp:
        meta_file = local / META_FILE
        if not meta_file.is_file():
            raise VidrayError(f"{checkpoint_dir} is not a vidray checkpoint (needs {META_FILE})")
        meta = yaml.safe_load(meta_file.read_text())
        _check_classifier(meta, checkpoint_dir)
        model_dir = Path(tmp) / tracking.MODEL_ARTIFACT
        with _no_progress_bars():
            mlflow.pyfunc.save_model(
                str(model_dir),
                python_model=str(Path(__file__).with_name("pyfunc_code.py")),
                artifacts={tracking.MODEL_CHECKPOINT_ARTIFACT: str(local)},
                signature=SIGNATURE,
                input_example=pd.DataFrame({"video": ["videos/clip.mp4", "s3://bucket/clip.mp4"]}),
                metadata=model_metadata(meta),
                pip_requirements=[f"vidray=={metadata.version('vidray')}"],
            )
        client = tracking.client(uri)
        client.log_artifacts(run_id, str(model_dir), tracking.MODEL_ARTIFACT)
    model_uri = f"runs:/{run_id}/{tracking.MODEL_ARTIFACT}"
    if not register_as:
        return model_uri
    return register(uri, register_as, run_id)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow copies a model's artifacts with a progress bar on stderr, one per model a
    training run logs: not a line a training's user needs."""
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _check_classifier(meta: dict[str, Any], checkpoint_dir: str | Path) -> None:
    """What `load_classifier` would refuse when the model is loaded, refused now."""
    task = ((meta.get("config") or {}).get("train") or {}).get("task", "classify")
    if task != "classify":
        raise VidrayError(
            f"{checkpoint_dir} is a {task!r} checkpoint: only a train.task=classify "
            "checkpoint is logged as an MLflow model"
        )
    if not (meta.get("dataset") or {}).get("storage"):
        raise VidrayError(
            f"{checkpoint_dir} does not record its training data's storage parameters (saved "
            "by an older vidray): retrain it"
        )


def register(uri: str, name: str, run_id: str) -> str:
    """A new version of the registered model ``name`` (created if new) from the run's
    logged ``model``; its ``models:/NAME/VERSION``. (A sweep can log every trial's
    model and register only the best trial's.)"""
    client = tracking.client(uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{tracking.MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run_id)
    return f"models:/{name}/{version.version}"


def checkpoint_of_model(model_uri: str, *, uri: str = "", dst: Path | None = None) -> Path:
    """The checkpoint directory inside the MLflow model ``model_uri`` (``models:/NAME/1``,
    ``runs:/ID/model``), downloaded under ``dst`` (default: a new temporary directory);
    ``uri``: the tracking and registry URI ("" = MLflow's default, $MLFLOW_TRACKING_URI)."""
    dst = dst or Path(tempfile.mkdtemp(prefix="vidray-model-"))
    where = {"tracking_uri": uri or None, "registry_uri": uri or None, "dst_path": str(dst)}
    try:
        if model_uri.startswith("models:/"):
            # MLflow resolves models:/ in its global registry, whatever registry_uri
            # download_artifacts is given: the version's source is looked up in ours.
            name, _, version = model_uri.removeprefix("models:/").rstrip("/").partition("/")
            client = mlflow.MlflowClient(tracking_uri=uri or None, registry_uri=uri or None)
            model_uri = client.get_model_version_download_uri(name, version)
        mlmodel = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/MLmodel", **where
        )
        flavor = mlflow.models.Model.load(mlmodel).flavors.get("python_function", {})
        artifact = flavor.get("artifacts", {}).get(tracking.MODEL_CHECKPOINT_ARTIFACT)
        if artifact is None:
            raise VidrayError(
                f"{model_uri} is not a vidray classifier (no {tracking.MODEL_CHECKPOINT_ARTIFACT!r}"
                " artifact): give a model logged by vidray training, or --checkpoint"
            )
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/{artifact['path']}", **where
        )
    except (MlflowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VidrayError(
            f"MLflow model {model_uri} cannot be read ({reason}): check the name and version "
            "(models:/NAME/VERSION) and mlflow.tracking_uri"
        ) from exc
    return Path(local)


register_model_logger("classify", log_classifier)
