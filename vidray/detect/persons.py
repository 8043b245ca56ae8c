"""Person boxes on keyframes, the first stage of `vidray detect`: either torchvision's
Faster R-CNN run on each keyframe frame, or boxes supplied in a proposals CSV.

Both keep the boxes at or above ``detection.proposal_threshold``, at most
``detection.max_boxes`` a keyframe, highest score first: the boxes evaluation
classifies are chosen the same way (`vidray.detect.clips`).

    persons = person_finder(cfg, device)
    persons(video_id, timestamps, frames)   # -> one list of ScoredBox per keyframe
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.models import get_model, get_model_weights

from vidray.config import Config, DetectConfig, DetectionConfig
from vidray.data.ava_files import ScoredBox, box_from_pixels, read_proposals
from vidray.errors import VidrayError
from vidray.state_dicts import read_state_dict

COCO_PERSON = 1  # the person label of torchvision's COCO detectors
COCO_CLASSES = 91  # torchvision's COCO label space (80 categories, ids up to 90)


class PersonDetector:
    """torchvision's Faster R-CNN on keyframe frames; its COCO weights come from
    ``detect.detector``, a state_dict file (or a torchvision weights name, fetched once)."""

    def __init__(
        self, detect: DetectConfig, detection: DetectionConfig, device: torch.device
    ) -> None:
        # The arch's weights enum lets a torchvision name stand for the file (COCO_V1).
        weights = read_state_dict(detect.detector, enum=get_model_weights(detect.detector_arch))
        self.model = get_model(
            detect.detector_arch, weights=None, weights_backbone=None, num_classes=COCO_CLASSES
        )
        try:
            self.model.load_state_dict(weights)
        except RuntimeError:
            # torch lists every missing and unexpected key over many lines
            raise VidrayError(
                f"detect.detector={detect.detector} does not fit detect.detector_arch="
                f"{detect.detector_arch}: give the builder its weights were saved from"
            ) from None
        self.model.eval().to(device)
        self.device = device
        self.threshold = detection.proposal_threshold
        self.max_boxes = detection.max_boxes

    @torch.no_grad()
    def __call__(
        self, video_id: str, timestamps: Sequence[int], frames: Sequence[np.ndarray]
    ) -> list[list[ScoredBox]]:
        images = [
            torch.from_numpy(np.ascontiguousarray(f)).to(self.device).permute(2, 0, 1) / 255.0
            for f in frames
        ]
        found = []
        for frame, out in zip(frames, self.model(images), strict=True):
            height, width = frame.shape[:2]
            person = out["labels"] == COCO_PERSON
            boxes = [
                ScoredBox(box_from_pixels(pixels, width, height), score)
                for pixels, score in zip(
                    out["boxes"][person].tolist(), out["scores"][person].tolist(), strict=True
                )
            ]
            found.append(_strongest(boxes, self.threshold, self.max_boxes))
        return found


class SuppliedProposals:
    """Person boxes read from a proposals CSV (`read_proposals`), keyed by video id
    (the video's file stem) and AVA timestamp."""

    def __init__(self, detect: DetectConfig, detection: DetectionConfig) -> None:
        path = Path(detect.proposals)
        if not path.is_file():
            raise VidrayError(f"detect.proposals={path}: file not found")
        self.path = path
        self.keyframes = read_proposals(path).keyframes
        self.threshold = detection.proposal_threshold
        self.max_boxes = detection.max_boxes

    def __call__(
        self, video_id: str, timestamps: Sequence[int], frames: Sequence[np.ndarray]
    ) -> list[list[ScoredBox]]:
        return [
            _strongest(self.keyframes.get((video_id, t), []), self.threshold, self.max_boxes)
            for t in timestamps
        ]

    def check_covers(self, video_id: str, timestamps: Sequence[int]) -> None:
        """A one-line error when the file has no box at any of the video's keyframes:
        a wrong file, or timestamps counted from another ``detect.time_offset``."""
        if not any((video_id, t) in self.keyframes for t in timestamps):
            raise VidrayError(
                f"{self.path} has no proposals for video {video_id!r} at seconds "
                f"{timestamps[0]}..{timestamps[-1]}: check the file and detect.time_offset"
            )


PersonFinder = PersonDetector | SuppliedProposals
"""Called with (video_id, AVA timestamps, (H, W, 3) uint8 keyframe frames), each gives
the person boxes (normalised) of every keyframe."""


def person_finder(cfg: Config, device: torch.device) -> PersonFinder:
    """The person boxes ``cfg`` names: ``detect.proposals`` or ``detect.detector``, kept
    at or above ``detection.proposal_threshold``, ``detection.max_boxes`` at most."""
    detect = cfg.detect
    if bool(detect.detector) == bool(detect.proposals):
        raise VidrayError(
            "vidray detect needs person boxes from one source: --detector FILE (a Faster R-CNN "
            "state_dict) or --proposals CSV"
        )
    if detect.proposals:
        return SuppliedProposals(detect, cfg.detection)
    return PersonDetector(detect, cfg.detection, device)


def _strongest(boxes: Sequence[ScoredBox], threshold: float, limit: int) -> list[ScoredBox]:
    """The boxes scored at or above `threshold`, highest first (ties keep their order)."""
    kept = [b for b in boxes if b.score >= threshold]
    return sorted(kept, key=lambda b: -b.score)[:limit]
