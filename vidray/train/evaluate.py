"""Evaluate a checkpoint on one split, as its task scores (`register_evaluator`):
classification here, multi-view testing; detection in `vidray.detect.evaluate`
(frame-mAP, the one implementation `vidray ava-map` runs).

Each stored window gives ``eval.temporal_views`` clips (evenly spaced over the
window) x ``eval.spatial_views`` crops (1: centre; 3: along the long side); a
video's prediction is the mean softmax over all the clips of all its windows.

    checkpoint -> model -> clips of every window of the split -> logits
      -> clip top-1; per video: mean softmax -> top-1, top-5, per class, confusion
      -> <eval.output>/predictions.csv, per_class.csv, confusion_matrix.png
      -> MLflow: metrics ``eval/<split>/...`` and the files under ``eval_<split>/``
         in the checkpoint's run (the per-epoch ``val/...`` curves stay untouched)

In-process by default (small sets). With ``eval.workers=N`` the logits come
from a Ray Data batch-inference job instead, the model replicated N times:

    read_clips(split, views, video_ids) -> map_batches(ClipPredictor, concurrency=N)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidray import storage, tracking
from vidray.checkpoints import load_checkpoint
from vidray.config import Config
from vidray.data.clips import check_views
from vidray.data.reading import iter_clip_batches, read_clips
from vidray.device import Normalization, for_inference
from vidray.errors import VidrayError
from vidray.train import report as files
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model
from vidray.train.metrics import VideoPredictions, video_predictions
from vidray.train.tasks import predict

CLIPS_PER_BATCH = 32


@dataclass(frozen=True)
class Evaluated:
    """What a task's evaluation of one split found and wrote."""

    clips: int  # clips scored (one per keyframe for detection)
    videos: int
    views: int  # clips per window
    metrics: dict[str, float]  # eval/<split>/<name>
    written: list[Path]  # report files
    headline: str  # the numbers the console line shows


# (cfg, the checkpoint's model, its config, its classes, the data, the output folder)
Evaluator = Callable[[Config, nn.Module, Config, list[str], str, Path], Evaluated]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(task: str, evaluator: Evaluator) -> None:
    """How ``vidray evaluate`` scores a checkpoint of ``train.task=<task>``: a task
    package registers its own, as it registers its task (`register_task`)."""
    if task in _EVALUATORS:
        raise ValueError(f"an evaluator for task {task!r} is registered twice")
    _EVALUATORS[task] = evaluator


@dataclass
class EvalReport:
    split: str
    clips: int
    videos: int
    views: int  # clips per window
    metrics: dict[str, float]  # eval/<split>/<name>
    output: Path  # the directory holding the report files
    run_id: str | None
    headline: str

    def report(self) -> str:
        return (
            f"evaluate [{self.split}]: {self.videos} videos, {self.clips} clips "
            f"({self.views} per window): {self.headline}; reports in {self.output}"
        )


def load_model(checkpoint: str | Path) -> tuple[nn.Module, Config, dict[str, Any]]:
    """The checkpoint's model (weights loaded, eval mode, on CPU), its config and meta.

    The network is built without the weights its training started from
    (``model.pretrained``, ``detection.backbone_checkpoint``): the checkpoint's own
    replace them, so those files need not exist, nor be fetched, where it is used.
    """
    state, meta = load_checkpoint(checkpoint)
    stored = Config.from_stored(meta["config"])
    # Resolved without those weights: the checkpoint records what they fixed (the
    # normalisation, the family's settings; an older one was trained with what the
    # defaults give). The config returned still names them: where the run started.
    blank = resolve_inputs(
        replace(
            stored,
            model=replace(stored.model, pretrained=""),
            detection=replace(stored.detection, backbone_checkpoint=""),
        )
    )
    model = build_model(blank, len(meta["classes"]))
    trained = replace(
        blank,
        model=replace(blank.model, pretrained=stored.model.pretrained),
        detection=replace(
            blank.detection, backbone_checkpoint=stored.detection.backbone_checkpoint
        ),
    )
    model.load_state_dict(state["model"])
    return model.eval(), trained, meta


class ClipPredictor:
    """Ray Data stage (an actor class): clip batches -> logits, one model replica per actor."""

    def __init__(self, checkpoint: str, use_gpu: bool) -> None:
        torch.set_num_threads(1)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        model, trained, _ = load_model(checkpoint)
        self.model = for_inference(model, self.device)
        self.normalization = Normalization.of(trained.clip)
        self.precision = trained.train.precision

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = predict(
            self.model,
            [batch],
            self.device,
            normalization=self.normalization,
            precision=self.precision,
        )
        return {
            "logits": out["logits"],
            "label": out["labels"],
            "video_key": out["keys"],
            "video_id": out["video_ids"],
        }


def _predict_with_ray(
    cfg: Config, trained: Config, data: str | Path, views: int
) -> dict[str, np.ndarray]:
    from vidray.runtime import init_ray

    init_ray(cfg.ray)
    clips = read_clips(
        storage.resolve(data),  # Ray workers run in other directories
        split=cfg.eval.split,
        clip=trained.clip,
        flow_L=trained.flow.L,
        train=False,
        temporal_views=cfg.eval.temporal_views,
        spatial_views=cfg.eval.spatial_views,
        video_ids=True,
    )
    logits = clips.map_batches(
        ClipPredictor,
        fn_constructor_kwargs={
            "checkpoint": storage.resolve(cfg.eval.checkpoint),
            "use_gpu": cfg.eval.use_gpu,
        },
        concurrency=cfg.eval.workers,
        batch_size=max(CLIPS_PER_BATCH, views),
        num_gpus=1 if cfg.eval.use_gpu else 0,
        num_cpus=1,
    )
    parts = list(logits.iter_batches(batch_size=None, batch_format="numpy"))
    if not parts:
        return {}
    return {
        "logits": np.concatenate([p["logits"] for p in parts]),
        "labels": np.concatenate([p["label"] for p in parts]),
        "keys": np.concatenate([p["video_key"] for p in parts]),
        "video_ids": np.concatenate([p["video_id"] for p in parts]),
    }


def write_reports(
    output: Path,
    result: VideoPredictions,
    video_ids: list[str],
    classes: list[str],
    *,
    title: str,
) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    return [
        files.write_predictions(output / files.PREDICTIONS_FILE, result, video_ids, classes),
        files.write_per_class(output / files.PER_CLASS_FILE, result, classes),
        files.plot_confusion_matrix(
            output / files.CONFUSION_FILE, result.confusion, classes, title=title
        ),
    ]


def default_output(checkpoint: str, split: str) -> Path:
    """Beside a local checkpoint; for a remote one, under ./eval/ named by its run and epoch."""
    if storage.is_uri(checkpoint):
        run, epoch = checkpoint.rstrip("/").split("/")[-2:]
        return Path("eval") / f"{run}_{epoch}_{split}"
    return Path(checkpoint) / f"eval_{split}"


def run_evaluation(cfg: Config) -> EvalReport:
    """``vidray evaluate``: the checkpoint scored on ``eval.split`` as its task scores
    (`register_evaluator`), the reports written, and the ``eval/<split>/*`` metrics
    logged on the training run."""
    _check_evaluation(cfg)
    model, trained, meta = load_model(cfg.eval.checkpoint)
    data = cfg.eval.data or trained.train.data
    if not storage.exists(data):
        raise VidrayError(f"evaluation data {data!r} not found: pass --data DIR")
    if trained.train.task not in _EVALUATORS:
        raise VidrayError(
            f"{cfg.eval.checkpoint} is a train.task={trained.train.task} checkpoint, which "
            f"vidray evaluate cannot score (it scores: {', '.join(sorted(_EVALUATORS))})"
        )
    output = Path(cfg.eval.output or default_output(cfg.eval.checkpoint, cfg.eval.split))
    evaluate = _EVALUATORS[trained.train.task]
    found = evaluate(cfg, model, trained, list(meta["classes"]), data, output)
    run_id = meta.get("run_id")
    if run_id:
        uri = tracking.tracking_uri(cfg.mlflow)
        tracking.log_metrics(uri, run_id, found.metrics, step=meta["epoch"])
        for path in found.written:
            tracking.log_artifact(uri, run_id, path, f"eval_{cfg.eval.split}")
    return EvalReport(
        split=cfg.eval.split,
        clips=found.clips,
        videos=found.videos,
        views=found.views,
        metrics=found.metrics,
        output=output,
        run_id=run_id,
        headline=found.headline,
    )


def evaluate_clips(
    cfg: Config, model: nn.Module, trained: Config, classes: list[str], data: str, output: Path
) -> Evaluated:
    """Classification: the clip logits of every view of every window of the split ->
    video predictions -> metrics, predictions.csv, per_class.csv, the confusion matrix."""
    split = cfg.eval.split
    views = cfg.eval.temporal_views * cfg.eval.spatial_views
    if cfg.eval.workers:
        out = _predict_with_ray(cfg, trained, data, views)
    else:
        out = _predict_here(cfg, model, trained, data, views)
    labels = _checked_labels(out, data, split, len(classes))
    result = video_predictions(out["logits"], labels, out["keys"], len(classes))
    id_of = dict(zip(out["keys"].tolist(), out["video_ids"].tolist(), strict=True))
    video_ids = [id_of[k] for k in result.keys.tolist()]
    title = (
        f"{trained.model.name} [{split}]: {len(video_ids)} videos, "
        f"{cfg.eval.temporal_views}x{cfg.eval.spatial_views} views"
    )
    m = result.metrics
    return Evaluated(
        clips=len(labels),
        videos=len(video_ids),
        views=views,
        metrics={tracking.split_metric(f"eval/{split}", k): v for k, v in m.items()},
        written=write_reports(output, result, video_ids, classes, title=title),
        headline=(
            f"video top-1 {m[tracking.VIDEO_TOP1]:.3f}, top-5 {m[tracking.VIDEO_TOP5]:.3f}, "
            f"mean class {m[tracking.MEAN_CLASS_ACC]:.3f}, clip top-1 {m[tracking.CLIP_TOP1]:.3f}"
        ),
    )


register_evaluator("classify", evaluate_clips)


def _check_evaluation(cfg: Config) -> None:
    if not cfg.eval.checkpoint:
        raise VidrayError("eval.checkpoint is not set: pass --checkpoint DIR")
    check_views(cfg.eval.temporal_views, cfg.eval.spatial_views)
    if cfg.eval.workers < 0:
        raise VidrayError(f"eval.workers={cfg.eval.workers}: 0 (in-process) or more replicas")


def _predict_here(
    cfg: Config, model: nn.Module, trained: Config, data: str, views: int
) -> dict[str, np.ndarray]:
    """The clip logits of ``eval.split`` in this process (on its GPU if it has one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = iter_clip_batches(
        data,
        split=cfg.eval.split,
        clip=trained.clip,
        flow_L=trained.flow.L,
        batch_rows=max(1, CLIPS_PER_BATCH // views),
        temporal_views=cfg.eval.temporal_views,
        spatial_views=cfg.eval.spatial_views,
        video_ids=True,
    )
    return predict(
        for_inference(model, device),
        batches,
        device,
        normalization=Normalization.of(trained.clip),
        precision=trained.train.precision,
    )


def _checked_labels(
    out: dict[str, np.ndarray], data: str, split: str, num_classes: int
) -> np.ndarray:
    """The clips' labels, once they are known to be labels of the checkpoint's classes."""
    if not len(out.get("labels", ())):  # no batch at all, locally or on Ray
        raise VidrayError(f"{data} has no windows in split {split!r}")
    labels = out["labels"]
    if labels.min() < 0:
        raise VidrayError(
            f"split {split!r} of {data} has unlabeled videos: evaluate a labeled split"
        )
    if labels.max() >= num_classes:
        raise VidrayError(
            f"{data} has labels up to {labels.max()}, but the checkpoint knows "
            f"{num_classes} classes: evaluate data ingested with the training classes"
        )
    return labels
