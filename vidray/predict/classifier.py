"""A classification checkpoint on a new video: what happens in it, and when.

The video is decoded as the checkpoint's training data was stored (frame rate, short
side, window length, frame codec, flow backend and quantisation: the ``dataset.yaml``
the checkpoint records), so the model sees windows exactly like the ones it learnt
from, and each window is scored as ``vidray evaluate`` scores one:

    video -> windows every ``stride_s`` seconds, encoded as ingest writes them  (CPU)
      -> temporal x spatial views of each window -> softmax, mean per window   (model)
      -> timeline: per window (start, end, class probabilities)
      -> the video's answer: the mean over its windows (every window has the same
         number of clips, so it is evaluate's mean over all of the video's clips)

The two halves run apart where that pays: `video_windows` (decode, flow, encode) in
CPU tasks, `WindowScorer` on the model's replica (`vidray.predict.job`,
`vidray.serve`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vidray.config import ClipConfig, Config, FlowConfig, IngestConfig
from vidray.data import decode
from vidray.data.clips import ClipSampler, check_views
from vidray.data.window_rows import WindowCoder, flow_estimator
from vidray.device import Normalization, for_inference
from vidray.errors import VideoError, VidrayError
from vidray.train.evaluate import load_model
from vidray.train.tasks import predict

CLIPS_PER_BATCH = 32  # per forward pass
WINDOWS_PER_BATCH = 8  # decoded windows held at a time
# What a window row needs besides its frames and flow: clip sampling reads these.
_VIDEO_FIELDS = {"video_id": "", "video_key": 0, "label": -1, "label_name": None, "split": ""}


@dataclass(frozen=True)
class Storage:
    """How the checkpoint's training data was stored: what decoding a new video repeats."""

    ingest: IngestConfig
    flow: FlowConfig

    @property
    def window_s(self) -> float:
        return self.ingest.window_frames / self.ingest.fps

    def with_stride(self, stride_s: float) -> Storage:
        """Windows every ``stride_s`` seconds (0: the training data's own stride)."""
        if stride_s < 0:
            raise VidrayError(f"predict.stride_s={stride_s}: 0 (as stored) or more seconds")
        if not stride_s:
            return self
        stride = max(1, round(stride_s * self.ingest.fps))
        return replace(self, ingest=replace(self.ingest, window_stride=stride))


@dataclass(frozen=True)
class TrainedClassifier:
    """A classification checkpoint's model and what inference must reproduce of its data."""

    model: torch.nn.Module  # eval mode, on CPU until `to` moves it
    classes: tuple[str, ...]
    storage: Storage
    clip: ClipConfig
    flow_L: int  # flow fields per clip (0: an RGB model)
    normalization: Normalization
    precision: str

    def sampler(self, temporal_views: int, spatial_views: int) -> ClipSampler:
        check_views(temporal_views, spatial_views)
        return ClipSampler(
            clip=self.clip,
            flow_L=self.flow_L,
            train=False,
            temporal_views=temporal_views,
            spatial_views=spatial_views,
        )


def load_classifier(checkpoint: str | Path) -> TrainedClassifier:
    """The classification model of ``checkpoint``; a one-line error for any other."""
    model, trained, meta = load_model(checkpoint)
    if trained.train.task != "classify":
        raise VidrayError(
            f"{checkpoint} is a {trained.train.task!r} checkpoint: vidray predict takes one "
            "trained with train.task=classify (vidray detect runs detection checkpoints)"
        )
    stored = (meta.get("dataset") or {}).get("storage")
    if not stored:
        raise VidrayError(
            f"{checkpoint} does not record its training data's storage parameters (saved "
            "by an older vidray): retrain it"
        )
    return TrainedClassifier(
        model=model,
        classes=tuple(meta["classes"]),
        storage=storage_of(trained, stored),
        clip=trained.clip,
        flow_L=trained.flow.L,
        normalization=Normalization.of(trained.clip),
        precision=trained.train.precision,
    )


def storage_of(trained: Config, stored: dict[str, Any]) -> Storage:
    """The ingest and flow settings of the stored ``ingest.*`` / ``flow.*`` parameters
    (the rest, e.g. decode threads and the RAFT weights' path, as this config has them)."""
    sections = {"ingest": {}, "flow": {}}
    for key, value in stored.items():
        section, name = key.split(".", 1)
        sections[section][name] = value
    return Storage(
        ingest=replace(trained.ingest, **sections["ingest"], cpus_per_task=1),
        flow=replace(trained.flow, **sections["flow"]),
    )


@dataclass(frozen=True)
class Window:
    """Where a window sits in the video, and its encoded row (the data contract's)."""

    start_s: float
    end_s: float
    row: dict[str, Any]


def video_windows(path: Path, storage: Storage) -> Iterator[Window]:
    """The windows of the local video ``path`` on the stored grid, each encoded as
    ingest writes a shard row. A video shorter than a window gives one, its last frame
    repeated (as ingest pads one); a file that does not decode raises `VideoError`."""
    segment = {
        **_VIDEO_FIELDS,
        "video_id": path.stem,
        "path": str(path),
        "start_sec": 0.0,
        "end_sec": None,
        "first_window": 0,
        "max_windows": -1,
    }
    import cv2

    ingest = storage.ingest
    # A task's core(s) only (`storage_of` sets one): OpenCV would use every core.
    cv2.setNumThreads(max(1, int(ingest.cpus_per_task)))
    coder = WindowCoder(ingest=ingest, flow=storage.flow, estimator=flow_estimator(storage.flow))
    windows = decode.iter_windows(
        path,
        fps=ingest.fps,
        short_side=ingest.short_side,
        max_upscale=ingest.max_upscale,
        window_frames=ingest.window_frames,
        window_stride=ingest.window_stride,
        threads=ingest.decode_threads,
    )
    real = ingest.window_frames
    for window in windows:
        end = window.start_sec + (real - window.padded) / ingest.fps
        yield Window(window.start_sec, end, coder.row(segment, window))


class WindowScorer:
    """Window rows -> class probabilities per window: each window's views through the
    model, softmax, mean over the views (`vidray evaluate`'s clips of a window)."""

    def __init__(
        self,
        classifier: TrainedClassifier,
        *,
        device: torch.device,
        temporal_views: int = 1,
        spatial_views: int = 1,
    ) -> None:
        self.classifier = classifier
        self.device = device
        self.model = for_inference(classifier.model, device)
        self.sampler = classifier.sampler(temporal_views, spatial_views)
        self.views = temporal_views * spatial_views

    def __call__(self, rows: list[dict[str, Any]] | pa.Table) -> np.ndarray:
        """(windows, classes) float64 probabilities of window rows (dicts or a table)."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
        # What clips are cut from, only: an RGB model's rows may hold an untyped null flow.
        table = table.select(self.sampler.columns)
        per_batch = max(1, CLIPS_PER_BATCH // self.views)
        parts = [np.zeros((0, len(self.classifier.classes)))]
        for first in range(0, table.num_rows, per_batch):
            clips = self.sampler(table.slice(first, per_batch))
            logits = predict(
                self.model,
                [clips],
                self.device,
                normalization=self.classifier.normalization,
                precision=self.classifier.precision,
            )["logits"]
            probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
            parts.append(probs.reshape(-1, self.views, probs.shape[1]).mean(axis=1))
        return np.concatenate(parts)


@dataclass(frozen=True)
class VideoPrediction:
    """A video's class probabilities (the mean over its windows) and its timeline."""

    video: str  # the path or URI as given
    classes: tuple[str, ...]
    starts: np.ndarray  # (windows,) seconds
    ends: np.ndarray  # (windows,) seconds
    window_probs: np.ndarray  # (windows, classes)

    @property
    def probs(self) -> np.ndarray:
        return self.window_probs.mean(axis=0)

    def top(self, k: int, probs: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The ``k`` most likely classes with their probabilities, most likely first."""
        probs = self.probs if probs is None else probs
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.classes[i], float(probs[i])) for i in order]

    def timeline(self, k: int) -> list[dict[str, Any]]:
        """Per window: start and end (seconds) and its top ``k``."""
        return [
            {"start_s": float(s), "end_s": float(e), "top": self.top(k, probs)}
            for s, e, probs in zip(self.starts, self.ends, self.window_probs, strict=True)
        ]

    def to_dict(self, k: int) -> dict[str, Any]:
        """The JSON answer: the video, its top ``k`` and its timeline."""
        return {
            "video": self.video,
            "top": [{"label": c, "score": p} for c, p in self.top(k)],
            "timeline": [
                {
                    "start_s": w["start_s"],
                    "end_s": w["end_s"],
                    "top": [{"label": c, "score": p} for c, p in w["top"]],
                }
                for w in self.timeline(k)
            ],
        }


def scored(
    video: str, windows: list[Window], probs: np.ndarray, classes: tuple[str, ...]
) -> VideoPrediction:
    """A `VideoPrediction` from a video's windows and their scores."""
    if not windows:
        raise VideoError(f"{video}: no window decoded")
    return VideoPrediction(
        video=video,
        classes=classes,
        starts=np.array([w.start_s for w in windows]),
        ends=np.array([w.end_s for w in windows]),
        window_probs=probs,
    )


def predict_video(
    path: Path, scorer: WindowScorer, *, stride_s: float = 0.0, video: str = ""
) -> VideoPrediction:
    """The local video ``path`` through ``scorer``, a window batch at a time (memory
    does not grow with the video). ``video`` names it in the answer (default: the path)."""
    classifier = scorer.classifier
    storage = classifier.storage.with_stride(stride_s)
    windows: list[Window] = []
    probs: list[np.ndarray] = []
    batch: list[Window] = []
    for window in video_windows(path, storage):
        batch.append(window)
        if len(batch) == WINDOWS_PER_BATCH:
            probs.append(scorer([w.row for w in batch]))
            windows += [replace(w, row={}) for w in batch]  # their frames are done with
            batch = []
    if batch:
        probs.append(scorer([w.row for w in batch]))
        windows += [replace(w, row={}) for w in batch]
    all_probs = np.concatenate(probs) if probs else np.zeros((0, len(classifier.classes)))
    return scored(video or str(path), windows, all_probs, classifier.classes)
