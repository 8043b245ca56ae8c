"""MLflow: the one place that names what a run logs.

Every run logs the config keys that shape it under their dotted names
(``clip.T``, ``model.name``; `run_params`), how its data was stored under
``data.*`` (`dataset_params`), per-epoch metrics under the names below (step:
the epoch, numbered from 1), the config YAML and the best checkpoint. The
names are the same for every model family so the MLflow compare view lines
runs up. All calls go through `MlflowClient` with an explicit run id, so the
driver and a Ray Train worker can log to one run.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from vidray.config import Config, MlflowConfig
from vidray.errors import VidrayError

# Metrics: ``<split>/<name>`` (`split_metric`), step = the epoch.
LOSS = "loss"
CLIP_TOP1 = "clip_top1"
VIDEO_TOP1 = "video_top1"
VIDEO_TOP5 = "video_top5"
MEAN_CLASS_ACC = "mean_class_acc"
FRAME_MAP = "frame_map"  # detection: frame-mAP at IoU 0.5 (the AVA protocol)
AP = "ap"  # detection: ``<split>/ap/<class>``, one per evaluated class


def split_metric(split: str, name: str) -> str:
    """A metric of one split's data: ``val/video_top1``, ``test/frame_map``."""
    return f"{split}/{name}"


TRAIN_LOSS = split_metric("train", LOSS)
TRAIN_CLIP_TOP1 = split_metric("train", CLIP_TOP1)
VAL_LOSS = split_metric("val", LOSS)
VAL_CLIP_TOP1 = split_metric("val", CLIP_TOP1)
VAL_VIDEO_TOP1 = split_metric("val", VIDEO_TOP1)
VAL_FRAME_MAP = split_metric("val", FRAME_MAP)
TRAIN_BOX_TOP1 = "train/box_top1"  # detection: boxes whose top-scoring action is theirs
TRAIN_LR = "train/lr"  # the rate of the epoch's first optimiser step
TRAIN_STEP = "train/global_step"  # optimiser steps so far, at the end of the epoch
EPOCH_SECONDS = "time/epoch_s"
CLIPS_PER_SECOND = "time/clips_per_s"
# What one Ray Train worker trained on in an epoch, its own count (the other training
# metrics are summed over workers); logged per worker as worker/<rank>/train/clips.
WORKER_CLIPS = "train/clips"
SWEEP_SECONDS = "time/sweep_s"  # on a sweep's parent run


def best_metric(name: str) -> str:
    """A sweep's parent-run metric: the best trial's ``name`` (``best/val/video_top1``)."""
    return f"best/{name}"


# Tags.
TASK_TAG = "vidray.task"  # what made the run: train, evaluate, tune
RESUMED_FROM_TAG = "vidray.resumed_from"  # the checkpoint a resumed training run continues
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a sweep's trials in its run
SWEEP_TAG = "vidray.sweep"  # a trial run's sweep name
TRIAL_TAG = "vidray.trial"  # a trial run's index in its sweep
# finished, failed, stopped early, not run; interrupted: a run a killed or stopped
# driver left, which --resume continued in a new run of the same trial
TRIAL_STATUS_TAG = "vidray.trial_status"
STOPPED_TAG = "vidray.stopped_early"  # what stopped a trial: asha, median, or time_budget
BUDGET_TAG = "vidray.time_budget_reached"  # on the parent run of a sweep the budget ended
INTERRUPTED_TAG = "vidray.interrupted"  # a run Ctrl-C or SIGTERM ended (KILLED)

DEFAULT_URI = "sqlite:///mlflow.db"


def safe_name(text: str) -> str:
    """``text`` as a piece of an MLflow param or metric name: MLflow allows letters,
    digits, ``_ - . / :`` and spaces, so a class name like "bend/bow (at the waist)"
    becomes "bend/bow _at the waist_"."""
    return re.sub(r"[^\w\-. /:]", "_", text)


def tracking_uri(cfg: MlflowConfig) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite in the working dir.

    A relative SQLite path is made absolute here, in the driver, because Ray
    workers run in other directories and must write to the same database.
    """
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    elif "://" not in uri:  # a plain directory: MLflow's file store
        uri = str(Path(uri).resolve())
    return uri


# Config keys that say nothing about a training run: how the videos were stored and
# their flow computed is the dataset's (logged from its dataset.yaml, `dataset_params`);
# evaluation settings are `vidray evaluate`'s.
_NOT_RUN_SECTIONS = ("ingest", "eval", "detect")  # what the data or a command was
_RUN_FLOW_KEYS = ("flow.L",)  # the one flow key a model reads; the rest shaped ingest


def run_params(cfg: Config) -> dict[str, Any]:
    """The config keys that shape a run, under their dotted names: model, clip, optim,
    train, mlflow and ray keys, ``flow.L``, and ``detection.*`` for a detection run."""
    left_out = _NOT_RUN_SECTIONS + (() if cfg.train.task == "detect" else ("detection",))
    params = {}
    for key, value in cfg.flat().items():
        section = key.split(".", 1)[0]
        if section in left_out or (section == "flow" and key not in _RUN_FLOW_KEYS):
            continue
        params[key] = value
    return params


def dataset_params(info: dict[str, Any]) -> dict[str, Any]:
    """How the training data was stored, from its dataset.yaml: ``data.layout``,
    ``data.input`` and every storage parameter (``ingest.fps`` -> ``data.fps``,
    ``flow.backend`` -> ``data.flow_backend``), whatever the training config says."""
    params = {"data.layout": info.get("layout", ""), "data.input": info.get("input", "")}
    for key, value in info.get("storage", {}).items():
        section, name = key.split(".", 1)
        params[f"data.{name}" if section == "ingest" else f"data.{section}_{name}"] = value
    return params


def training_data_params(
    info: dict[str, Any], windows: dict[str, int], *, steps_per_epoch: int
) -> dict[str, Any]:
    """`dataset_params`, and what a training run takes of the data: its size, the
    windows of each split (``data.windows_val``) and the optimiser steps per epoch."""
    return {
        **dataset_params(info),
        "data.videos": info["videos"],
        "data.windows": info["windows"],
        "data.classes": len(info["classes"]),
        **{f"data.windows_{split}": n for split, n in windows.items()},
        "data.steps_per_epoch": steps_per_epoch,
    }


def resource_params(resources: dict[str, float]) -> dict[str, float]:
    """The cluster a run had (``ray.cluster_resources()``), so runs on different clusters
    compare fairly."""
    return {"ray.cpus": resources.get("CPU", 0), "ray.gpus": resources.get("GPU", 0)}


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Fail at start, in one line, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        raise VidrayError(
            f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}): "
            "start it or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from exc


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_run(cfg: Config, *, uri: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create a run with the config keys that shape it as params (`run_params`); its id."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow_client.create_experiment(cfg.mlflow.experiment)
    )
    all_tags = {"mlflow.runName": run_name, **(tags or {})}
    commit = _git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run = mlflow_client.create_run(experiment_id, tags=all_tags, run_name=run_name)
    log_params(uri, run.info.run_id, run_params(cfg))
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    # MLflow caps a batch at 100 params.
    items = [Param(k, str(v)) for k, v in params.items()]
    mlflow_client = client(uri)
    for i in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], *, step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    client(uri).log_batch(run_id, metrics=batch)


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    mlflow_client = client(uri)
    if path.is_dir():
        mlflow_client.log_artifacts(run_id, str(path), artifact_path)
    else:
        mlflow_client.log_artifact(run_id, str(path), artifact_path)


def end_run(uri: str, run_id: str, *, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def worker_metric(rank: int, name: str) -> str:
    """One Ray Train worker's reported value, e.g. ``worker/1/train/clips``."""
    return f"worker/{rank}/{name}"


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


# Population-based training (``sweep.scheduler: pbt``): a trial run's lineage. Each
# exploit is a tag ``vidray.pbt.exploit.<n>`` (the n-th of the run), JSON:
# {"from_trial": the donor's index, "epoch": the donor's epoch the trial continues
# from, "values": the mutated keys' new values, "checkpoint": the donor's checkpoint}.
PBT_EXPLOIT_TAG = "vidray.pbt.exploit"
PBT_FROM_TRIAL = "pbt/from_trial"  # metric, step = that epoch: the donor's index


def pbt_exploit_tag(n: int) -> str:
    """The tag of a PBT trial run's ``n``-th exploit (from 1): ``vidray.pbt.exploit.1``."""
    return f"{PBT_EXPLOIT_TAG}.{n}"


def pbt_value(key: str) -> str:
    """Metric: a PBT-mutated key's value from its step (epoch) on: ``pbt/optim.lr``."""
    return f"pbt/{key}"


# The best checkpoint as an MLflow model (`vidray.train.publish`, `vidray.predict.pyfunc`):
# run artifact path ``model`` holding the checkpoint as its pyfunc artifact ``checkpoint``,
# and on the run a tag with the model's URI (runs:/ID/model or models:/NAME/VERSION).
MODEL_ARTIFACT = "model"
MODEL_CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_URI_TAG = "vidray.model_uri"
