"""Evaluate a checkpoint in-process: clip accuracy and video accuracy on one split.

Each stored window gives one centred clip; a video's prediction is the mean
softmax over its clips. Results go to the checkpoint's MLflow run under
``eval/<split>/...`` (the per-epoch ``val/...`` curves stay untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vidray import tracking
from vidray.config import Config
from vidray.data.clips import iter_clip_batches
from vidray.errors import VidrayError
from vidray.train.checkpoints import load_checkpoint
from vidray.train.loop import build_model, predict
from vidray.train.metrics import classification_metrics


@dataclass
class EvalReport:
    split: str
    clips: int
    videos: int
    metrics: dict[str, float]
    run_id: str | None

    def report(self) -> str:
        m = {k.rsplit("/", 1)[-1]: v for k, v in self.metrics.items()}
        return (
            f"evaluate [{self.split}]: {self.videos} videos, {self.clips} clips: "
            f"video top-1 {m['video_top1']:.3f}, top-5 {m['video_top5']:.3f}, "
            f"clip top-1 {m['clip_top1']:.3f}"
        )


def run_evaluation(cfg: Config) -> EvalReport:
    if not cfg.eval.checkpoint:
        raise VidrayError("eval.checkpoint is not set: pass --checkpoint DIR")
    state, meta = load_checkpoint(cfg.eval.checkpoint)
    trained = Config.from_dict(meta["config"])
    data = cfg.eval.data or trained.train.data
    if not Path(data).is_dir():
        raise VidrayError(f"evaluation data {data!r} not found: pass --data DIR")
    model = build_model(trained, len(meta["classes"]))
    model.load_state_dict(state["model"])
    batches = (
        {k: torch.from_numpy(v) for k, v in batch.items()}
        for batch in iter_clip_batches(
            data, split=cfg.eval.split, clip=trained.clip, flow_L=trained.flow.L
        )
    )
    out = predict(model, batches, torch.device("cpu"))
    if len(out["labels"]) == 0:
        raise VidrayError(f"{data} has no windows in split {cfg.eval.split!r}")
    metrics = classification_metrics(
        out["logits"], out["labels"], out["keys"], prefix=f"eval/{cfg.eval.split}"
    )
    run_id = meta.get("run_id")
    if run_id:
        uri = tracking.tracking_uri(cfg.mlflow)
        tracking.log_metrics(uri, run_id, metrics, step=meta["epoch"])
    return EvalReport(
        split=cfg.eval.split,
        clips=len(out["labels"]),
        videos=len(set(out["keys"].tolist())),
        metrics=metrics,
        run_id=run_id,
    )
