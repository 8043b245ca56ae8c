"""Draw detections on a video: each person box and its top actions, written with PyAV.

The video is drawn at its own frame rate and size (or a short side the user
picks), not at the small stored size the model saw: boxes are fractions of the
frame, so they land in the same place at any size, and labels are legible. A
keyframe's boxes stay on screen for the second around it (video second s covers
frames ``(s - 1/2) * fps .. (s + 1/2) * fps - 1``), as AVA labels that second.
Frames stream from decoder to encoder; only the frame being drawn is held.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from vidray.data.ava_files import Box, Detection, box_to_pixels
from vidray.data.decode import iter_frames, probe
from vidray.data.synthetic import write_video

TOP_ACTIONS = 3
# Distinct, saturated RGB colours, one per box of a keyframe (cycled).
PALETTE = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (90, 255, 90), (255, 90, 255))
TEXT_COLOUR = (0, 0, 0)


def render_detections(
    video: Path,
    output: Path,
    by_second: Mapping[int, Sequence[Detection]],
    *,
    names: Mapping[int, str],
    short_side: int = 0,
) -> Path:
    """Write ``video`` to ``output`` (.mp4) with the detections of each video second
    drawn, at the video's frame rate and size (``short_side`` > 0: resized to it);
    ``names`` maps action ids to the names shown."""
    fps = probe(video).fps
    frames = iter_frames(video, fps=fps, short_side=short_side)
    drawn = _drawn_frames(frames, by_second, fps=fps, names=names)
    return write_video(output, drawn, fps=fps)


def _drawn_frames(
    frames: Iterator[np.ndarray],
    by_second: Mapping[int, Sequence[Detection]],
    *,
    fps: float,
    names: Mapping[int, str],
) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        found = by_second.get(math.floor(index / fps + 0.5))
        yield draw_detections(frame, found, names) if found else frame


def draw_detections(
    frame: np.ndarray, detections: Sequence[Detection], names: Mapping[int, str]
) -> np.ndarray:
    """A copy of ``frame`` (H, W, 3 RGB) with each box outlined and labelled with its
    top actions (name and score), one line each, near the box's top-left corner and
    clear of the labels already drawn."""
    canvas = frame.copy()
    height, width = canvas.shape[:2]
    scale = max(0.3, height / 480)  # legible on a 96-pixel frame, in proportion on a big one
    thickness = max(2, round(height / 240))  # 1-pixel lines fade in the encoder's 4:2:0 chroma
    placed: list[Rect] = []
    for n, (box, actions) in enumerate(_by_box(detections).items()):
        colour = PALETTE[n % len(PALETTE)]
        x1, y1, x2, y2 = (round(v) for v in box_to_pixels(box, width, height))
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, thickness)
        top = sorted(actions, key=lambda d: -d.score)[:TOP_ACTIONS]
        lines = [f"{names.get(a.action_id, a.action_id)} {a.score:.2f}" for a in top]
        sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1) for t in lines]
        block = (max(w for (w, _), _ in sizes) + 2, sum(h + base for (_, h), base in sizes))
        x, y = place_label(block, (x1, y1, x2, y2), placed, frame_height=height, gap=thickness)
        placed.append((x, y, x + block[0], y + block[1]))
        for text, ((w, h), base) in zip(lines, sizes, strict=True):
            # A filled strip in the box's colour keeps the text readable on any background.
            cv2.rectangle(canvas, (x, y), (x + w + 2, y + h + base), colour, cv2.FILLED)
            cv2.putText(
                canvas,
                text,
                (x + 1, y + h),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                TEXT_COLOUR,
                1,
                cv2.LINE_AA,
            )
            y += h + base
    return canvas


Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2 and y2 excluded


def place_label(
    size: tuple[int, int], box: Rect, placed: Sequence[Rect], *, frame_height: int, gap: int
) -> tuple[int, int]:
    """Top-left corner for a label block of ``size`` (width, height) at ``box``'s left edge.

    Above the box where the frame has room (the label then hides none of the person),
    else just inside its top; moved down past any label already ``placed`` that it
    would cover, since people standing together have boxes whose corners meet.
    """
    width, height = size
    x = box[0]
    y = box[1] - height if box[1] >= height else box[1] + gap
    moved = True
    while moved:
        moved = False
        for other in placed:
            overlaps = (
                x < other[2] and other[0] < x + width and y < other[3] and other[1] < y + height
            )
            if overlaps:
                y, moved = other[3], True
    return x, min(y, max(0, frame_height - height))


def _by_box(detections: Sequence[Detection]) -> dict[Box, list[Detection]]:
    """The detections grouped by box (one row per box x action in the AVA format)."""
    grouped: dict[Box, list[Detection]] = {}
    for detection in detections:
        grouped.setdefault(detection.box, []).append(detection)
    return grouped
