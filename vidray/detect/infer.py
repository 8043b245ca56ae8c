"""`vidray detect`: a trained detection checkpoint on new videos -> AVA-format detections.

For one video, in-process:

    probe -> keyframes at whole seconds 1 .. duration - 1
      -> windows centred on them, decoded as training stored them (fps, short side, size)
      -> person boxes on each keyframe frame (Faster R-CNN, or a proposals CSV)
      -> the checkpoint's head on the clip around each keyframe: a score per box x class
      -> <detect.output>: the AVA result CSV (video_id, timestamp, box, action_id, score)
      -> <detect.render>: the video with the boxes and top actions drawn (`render`)

Timestamps are whole video seconds plus ``detect.time_offset``; video ids are file
stems. Windows stream through a few keyframes at a time, so memory does not grow
with the video. A folder of videos is a Ray Data job, one model replica per actor:

    from_items(video paths) -> map(VideoDetector, concurrency=detect.workers)
      -> <detect.output>/<video_id>_detections.csv each, and detections.csv for all
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidray import storage
from vidray.config import Config
from vidray.data.ava_files import (
    Box,
    Detection,
    KeyframeKey,
    box_to_pixels,
    write_detections,
)
from vidray.data.decode import Window, iter_keyframe_windows, probe
from vidray.data.sources import VIDEO_EXTENSIONS
from vidray.detect.clips import frame_indices
from vidray.detect.persons import PersonFinder, SuppliedProposals, person_finder
from vidray.detect.render import render_detections
from vidray.device import Normalization, frames_to_input
from vidray.errors import VidrayError
from vidray.train.evaluate import load_model

KEYFRAMES_PER_BATCH = 8  # clips per forward pass of the action head
COMBINED_FILE = "detections.csv"


@dataclass(frozen=True)
class TrainedDetector:
    """A detection checkpoint's model and what inference must reproduce of its training."""

    model: nn.Module  # eval mode, on CPU
    normalization: Normalization  # of the clips it was trained on
    T: int  # clip frames
    stride: int  # clip stride in stored frames
    fps: float  # stored frame rate
    short_side: int  # stored short side
    window_frames: int  # stored window, centred on the keyframe
    action_ids: tuple[int, ...]  # output order
    classes: tuple[str, ...]  # names, in the same order

    @property
    def names(self) -> dict[int, str]:
        return dict(zip(self.action_ids, self.classes, strict=True))


def load_detector(checkpoint: str) -> TrainedDetector:
    """The detection model of ``checkpoint``; a one-line error for any other checkpoint."""
    model, trained, meta = load_model(checkpoint)
    if trained.train.task != "detect":
        raise VidrayError(
            f"{checkpoint} is a {trained.train.task!r} checkpoint: vidray detect needs one "
            "trained with train.task=detect"
        )
    dataset = meta.get("dataset") or {}
    if "class_ids" not in dataset or "storage" not in dataset:
        raise VidrayError(
            f"{checkpoint} does not record its training data's class ids and storage "
            "parameters (saved by an older vidray): retrain it"
        )
    stored = dataset["storage"]
    return TrainedDetector(
        model=model,
        normalization=Normalization.of(trained.clip),
        T=trained.clip.T,
        stride=trained.clip.stride,
        fps=float(stored["ingest.fps"]),
        short_side=int(stored["ingest.short_side"]),
        window_frames=int(stored["ingest.window_frames"]),
        action_ids=tuple(dataset["class_ids"]),
        classes=tuple(meta["classes"]),
    )


def keyframe_seconds(duration: float) -> list[int]:
    """Whole seconds with at least a second of video on each side: 1 .. duration - 1."""
    # probe's duration of an n-second video can fall a hair short of n
    return list(range(1, math.floor(duration + 1e-3)))


@dataclass(frozen=True)
class VideoDetections:
    video_id: str
    keyframes: dict[KeyframeKey, list[Detection]]  # every keyframe, one row per box x class
    boxes: int  # person boxes classified

    def by_second(self, time_offset: int) -> dict[int, list[Detection]]:
        """The detections keyed by video second rather than AVA timestamp."""
        return {timestamp - time_offset: found for (_, timestamp), found in self.keyframes.items()}

    def to_arrays(self) -> dict[str, Any]:
        """Numpy columns, as a Ray Data row carries them back from an actor."""
        rows = [d for found in self.keyframes.values() for d in found]
        return {
            "video_id": self.video_id,
            "boxes": self.boxes,
            "keyframes": np.array([t for _, t in self.keyframes], np.int64),
            "counts": np.array([len(found) for found in self.keyframes.values()], np.int64),
            "coords": np.array([d.box for d in rows], np.float64).reshape(-1, 4),
            "action_ids": np.array([d.action_id for d in rows], np.int64),
            "scores": np.array([d.score for d in rows], np.float64),
        }

    @classmethod
    def from_arrays(cls, row: Mapping[str, Any]) -> VideoDetections:
        rows = [
            Detection(Box(*coords), int(action), float(score))
            for coords, action, score in zip(
                np.asarray(row["coords"]).tolist(),
                np.asarray(row["action_ids"]).tolist(),
                np.asarray(row["scores"]).tolist(),
                strict=True,
            )
        ]
        ends = np.cumsum(row["counts"]).tolist()
        starts = [0, *ends[:-1]]
        keyframes = {
            (row["video_id"], int(t)): rows[a:b]
            for t, a, b in zip(np.asarray(row["keyframes"]).tolist(), starts, ends, strict=True)
        }
        return cls(video_id=row["video_id"], keyframes=keyframes, boxes=int(row["boxes"]))


def detect_video(
    path: Path,
    detector: TrainedDetector,
    persons: PersonFinder,
    *,
    time_offset: int,
    device: torch.device,
) -> VideoDetections:
    """Person boxes and their action scores at every keyframe of the video at ``path``.

    ``detector.model`` must already be on ``device``. A video under 2 s (no keyframe)
    or one the proposals do not cover is a one-line error.
    """
    video_id = path.stem
    seconds = keyframe_seconds(probe(path).duration)
    if not seconds:
        raise VidrayError(
            f"{path}: shorter than 2 s; vidray detect classifies whole seconds with a "
            "second of video on each side"
        )
    timestamps = [s + time_offset for s in seconds]
    if isinstance(persons, SuppliedProposals):
        persons.check_covers(video_id, timestamps)
    windows = iter_keyframe_windows(
        path,
        centres=[round(s * detector.fps) for s in seconds],
        fps=detector.fps,
        short_side=detector.short_side,
        window_frames=detector.window_frames,
    )
    keyframes: dict[KeyframeKey, list[Detection]] = {}
    boxes = 0
    for batch in _batches(windows, KEYFRAMES_PER_BATCH):
        stamps = [timestamps[w.index] for w in batch]
        found = _classify(batch, stamps, video_id, detector, persons, device)
        for timestamp, detections in zip(stamps, found, strict=True):
            keyframes[(video_id, timestamp)] = detections
            boxes += len(detections) // len(detector.action_ids)  # a row per box x class
    return VideoDetections(video_id=video_id, keyframes=keyframes, boxes=boxes)


@torch.no_grad()
def _classify(
    windows: list[Window],
    timestamps: list[int],
    video_id: str,
    detector: TrainedDetector,
    persons: PersonFinder,
    device: torch.device,
) -> list[list[Detection]]:
    """One keyframe batch: person boxes, then one forward pass over the clips holding any."""
    middle = detector.window_frames // 2
    people = persons(video_id, timestamps, [w.frames[middle] for w in windows])
    picked = frame_indices(middle, detector.window_frames, detector.T, detector.stride)
    with_people = [i for i, found in enumerate(people) if found]
    found: list[list[Detection]] = [[] for _ in windows]
    if not with_people:
        return found
    clips = np.stack([windows[i].frames[picked] for i in with_people])
    height, width = clips.shape[2:4]
    rows = [
        [b, *box_to_pixels(p.box, width, height)]
        for b, i in enumerate(with_people)
        for p in people[i]
    ]
    clip_input = frames_to_input(torch.from_numpy(clips).to(device), detector.normalization)
    logits = detector.model(clip_input, torch.tensor(rows, dtype=torch.float32, device=device))
    scores = iter(torch.sigmoid(logits.float()).cpu().tolist())
    for i in with_people:
        for person in people[i]:
            found[i].extend(
                Detection(person.box, action, score)
                for action, score in zip(detector.action_ids, next(scores), strict=True)
            )
    return found


def _batches(windows: Iterator[Window], size: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class DetectReport:
    videos: list[VideoDetections]
    outputs: list[Path]  # the CSVs written: one per video, then the combined one (folder)
    rendered: Path | None = None
    failed: dict[str, str] = field(default_factory=dict)  # video path -> one-line reason

    def report(self) -> str:
        keyframes = sum(len(v.keyframes) for v in self.videos)
        boxes = sum(v.boxes for v in self.videos)
        lines = [
            f"detect: {len(self.videos)} video(s), {keyframes} keyframes, {boxes} person boxes "
            f"classified -> {self.outputs[-1]}"
        ]
        if self.rendered:
            lines.append(f"detect: boxes and top actions drawn on {self.rendered}")
        # A reason from the decoder names the file already: say it once.
        lines += [
            f"detect: skipped {path}: {reason.removeprefix(f'{path}: ')}"
            for path, reason in self.failed.items()
        ]
        return "\n".join(lines)


def run_detect(cfg: Config) -> DetectReport:
    """``vidray detect``: one video in-process, or every video of a folder with Ray Data."""
    detect = cfg.detect
    if not detect.video or not detect.checkpoint:
        raise VidrayError(
            "vidray detect needs --video PATH (a file or a folder) and --checkpoint DIR"
        )
    video = Path(detect.video)
    if not video.exists():
        raise VidrayError(f"detect.video={video}: no such file or folder")
    if video.is_dir():
        return _detect_folder(cfg, video)
    if detect.render and Path(detect.render).suffix.lower() != ".mp4":
        raise VidrayError(f"detect.render={detect.render}: name an .mp4 file to write")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    persons = person_finder(cfg, device)
    detector = load_detector(detect.checkpoint)
    detector.model.to(device)
    found = detect_video(video, detector, persons, time_offset=detect.time_offset, device=device)
    output = write_detections(detect.output or csv_name(found.video_id), found.keyframes)
    rendered = None
    if detect.render:
        rendered = render_detections(
            video,
            Path(detect.render),
            found.by_second(detect.time_offset),
            names=detector.names,
            short_side=detect.render_short_side,
        )
    return DetectReport(videos=[found], outputs=[output], rendered=rendered)


class VideoDetector:
    """Ray Data stage (an actor class): a video path -> its detections, one model per actor.

    A video that cannot be read is reported in the row (``error``), never fatal: the
    other videos of the folder go on.
    """

    def __init__(self, cfg: Config) -> None:
        torch.set_num_threads(1)  # the actors share the node's cores
        self.device = torch.device("cpu")
        self.persons = person_finder(cfg, self.device)
        self.detector = load_detector(cfg.detect.checkpoint)
        self.time_offset = cfg.detect.time_offset

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        path = Path(row["path"])
        try:
            found = detect_video(
                path, self.detector, self.persons, time_offset=self.time_offset, device=self.device
            )
        except VidrayError as exc:
            nothing = VideoDetections(video_id=path.stem, keyframes={}, boxes=0)
            return {"path": str(path), "error": str(exc), **nothing.to_arrays()}
        return {"path": str(path), "error": "", **found.to_arrays()}


def csv_name(video_id: str) -> str:
    """The default file name of a video's detections."""
    return f"{video_id}_detections.csv"


def _detect_folder(cfg: Config, folder: Path) -> DetectReport:
    """Every video file directly in ``folder``, by a Ray Data job; CSVs under detect.output."""
    from ray.data import from_items

    from vidray.runtime import init_ray

    detect = cfg.detect
    if detect.render:
        raise VidrayError("detect.render draws on one video: pass --video FILE to render it")
    if detect.workers < 1:
        raise VidrayError(f"detect.workers={detect.workers}: the folder job needs 1 or more")
    videos = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    )
    if not videos:
        raise VidrayError(f"{folder} holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    stems = [p.stem for p in videos]
    shared = sorted({s for s in stems if stems.count(s) > 1})
    if shared:
        raise VidrayError(
            f"{folder}: several videos share the id {shared[0]!r} (video ids are file stems)"
        )
    # Check what the actors will need here, so a bad input fails once, in one line.
    person_finder(cfg, torch.device("cpu"))
    load_detector(detect.checkpoint)
    output = Path(detect.output or f"{folder.name}_detections")

    init_ray(cfg.ray)
    job = from_items([{"path": str(p.resolve())} for p in videos]).map(
        VideoDetector,
        # Ray workers run in other directories: every path they open is made absolute.
        fn_constructor_kwargs={"cfg": _with_absolute_paths(cfg)},
        concurrency=detect.workers,
        num_cpus=1,
    )
    rows = sorted(job.iter_rows(), key=lambda r: r["path"])
    found, outputs, failed = [], [], {}
    for row in rows:
        if row["error"]:
            failed[row["path"]] = row["error"]
            continue
        video = VideoDetections.from_arrays(row)
        found.append(video)
        outputs.append(write_detections(output / csv_name(video.video_id), video.keyframes))
    if not found:
        raise VidrayError(f"no video in {folder} could be processed: {next(iter(failed.values()))}")
    combined = {key: dets for video in found for key, dets in video.keyframes.items()}
    outputs.append(write_detections(output / COMBINED_FILE, combined))
    return DetectReport(videos=found, outputs=outputs, failed=failed)


def _with_absolute_paths(cfg: Config) -> Config:
    detect = cfg.detect
    return replace(
        cfg,
        detect=replace(
            detect,
            checkpoint=storage.resolve(detect.checkpoint),
            detector=str(Path(detect.detector).resolve()) if detect.detector else "",
            proposals=str(Path(detect.proposals).resolve()) if detect.proposals else "",
        ),
    )
