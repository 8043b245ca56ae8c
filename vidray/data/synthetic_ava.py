"""A synthetic AVA-like dataset: textured actors whose actions are their motion.

Each video shows 2-3 "actors" (textured rectangles with a dark outline) over a
static textured background. Every actor does a set of actions (multi-label) that
changes from one second to the next:

====  ============  ==========================================================
id    name          what the actor does during the second around a keyframe
====  ============  ==========================================================
1     move left     its box moves left (1.5-3 px per frame)
2     move right    its box moves right
3     move up       its box moves up
4     move down     its box moves down
5     pulse         it grows, then shrinks back (one sine period, +15..30 %)
6     spin          its texture turns inside the box (either way, 8-15° per frame)
====  ============  ==========================================================

A horizontal and a vertical move, pulse and spin combine freely (an actor may
move up-left while spinning); left/right and up/down exclude each other. An
actor with no action never occurs (AVA boxes always carry one). Appearance
carries no label: textures, sizes and starting positions are drawn alike for every
action, and at a keyframe a pulsing actor is at its base size (exactly, for an even
fps), so only motion in the frames around a keyframe tells the actions apart. (Actors
stay inside the frame, so one moving left is a little likelier to be on the right.)

Time: frame 0 shows annotation second `time_offset` (default ``AVA_TIME_OFFSET`` =
900, as in AVA's 15-minute cuts), so keyframe second t is frame
``(t - time_offset) * fps``. Keyframes are at 1 Hz, at every whole second with a
full second of video on both sides: ``time_offset + 1 .. time_offset +
duration_sec - 1``. An actor's actions are constant over the second centred on
each keyframe (frames ``(k - 1/2) * fps .. (k + 1/2) * fps - 1`` of video second k).

Files, named as AVA's (``root/annotations/``):

- ``ava_{train,val}_v2.2.csv``: ground truth (boxes of the keyframe itself);
- ``ava_action_list_v2.2.pbtxt``: the label map (``label {}`` form) and
  ``ava_action_list_v2.2_for_activitynet_2019.pbtxt``: the evaluation label map
  (``item {}`` form, the same six classes);
- ``ava_{train,val}_excluded_timestamps_v2.2.csv``: one keyframe of every
  odd-numbered video, left out of the ground truth (as AVA's are);
- ``ava_{train,val}_predicted_boxes.csv``: person proposals for every keyframe
  (excluded ones too) in SlowFast's 8-column form: each actor's box with its
  edges jittered (score 0.7-1.0) and 0-2 false boxes (IoU < 0.3 with every
  actor, score 0.05-0.5).

Videos are ``root/videos/<video_id>.mp4`` with ids ``synth_000``, ``synth_001``...;
the last `val_videos` are the val split. The same `seed` writes the same dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vidray.data.ava_files import (
    AVA_TIME_OFFSET,
    Box,
    KeyframeKey,
    Label,
    LabeledBox,
    ScoredBox,
    box_from_pixels,
    box_iou,
    write_annotations,
    write_excluded,
    write_label_map,
    write_proposals,
)
from vidray.data.synthetic import _texture, write_video
from vidray.errors import VidrayError

__all__ = ["ACTIONS", "SyntheticAva", "write_ava_dataset"]

ACTIONS: tuple[str, ...] = ("move left", "move right", "move up", "move down", "pulse", "spin")
"""Action names; the action id of ``ACTIONS[i]`` is ``i + 1``."""

_LEFT, _RIGHT, _UP, _DOWN, _PULSE, _SPIN = range(1, 7)
_SPEED_PX = (1.5, 3.0)  # translation per frame
_SPIN_DEG = (8.0, 15.0)  # rotation per frame
_PULSE_AMPLITUDE = (0.15, 0.3)  # peak relative growth
_KEEP_ACTIONS = 0.5  # chance an actor keeps last second's actions
_ACTOR_WIDTH = (0.18, 0.28)  # of the frame width
_ACTOR_HEIGHT = (0.25, 0.4)  # of the frame height
_MARGIN_PX = 2  # actors stay this far inside the frame
_ENCODE_OPTIONS = {"crf": "18", "preset": "veryfast"}


@dataclass(frozen=True)
class SyntheticAva:
    """Where `write_ava_dataset` put everything, and the facts an ingest needs."""

    root: Path
    videos: dict[str, Path]  # video_id -> video file
    splits: dict[str, list[str]]  # "train" / "val" -> video ids
    annotations: dict[str, Path]  # split -> annotation CSV
    excluded: dict[str, Path]  # split -> excluded-timestamps CSV
    proposals: dict[str, Path]  # split -> person proposals CSV
    label_map: Path
    eval_label_map: Path
    fps: float
    size: tuple[int, int]  # (width, height)
    num_frames: int  # per video
    time_offset: int  # the annotation second of frame 0
    keyframe_seconds: tuple[int, ...]  # the keyframe timestamps of every video


@dataclass
class _Actor:
    texture: np.ndarray
    width: float  # base size in pixels
    height: float
    x: float  # centre
    y: float
    angle: float  # texture rotation, radians
    texture_point: np.ndarray  # texture point drawn at the box centre
    actions: frozenset[int] = frozenset()
    velocity: tuple[float, float] = (0.0, 0.0)
    spin: float = 0.0  # radians per frame
    pulse: float = 0.0  # amplitude


def write_ava_dataset(
    root: str | Path,
    *,
    num_videos: int = 8,
    val_videos: int = 2,
    duration_sec: int = 10,
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    time_offset: int = AVA_TIME_OFFSET,
    codec: str = "libx264",
    seed: int = 0,
) -> SyntheticAva:
    """Write the synthetic AVA-like dataset under `root` (see the module docstring).

    `size` is (width, height); `fps` must be a whole number so that keyframes fall
    on frames. Returns the paths written and the dataset's timing facts.
    """
    _check_arguments(num_videos, val_videos, duration_sec, fps, size)
    width, height = size
    fps = int(fps)
    root = Path(root)
    num_frames = duration_sec * fps
    seconds = tuple(range(1, duration_sec))  # keyframes, in video seconds

    videos: dict[str, Path] = {}
    splits: dict[str, list[str]] = {"train": [], "val": []}
    truth: dict[str, dict[KeyframeKey, list[LabeledBox]]] = {"train": {}, "val": {}}
    proposals: dict[str, dict[KeyframeKey, list[ScoredBox]]] = {"train": {}, "val": {}}
    excluded: dict[str, list[KeyframeKey]] = {"train": [], "val": []}
    for index in range(num_videos):
        video_id = f"synth_{index:03d}"
        split = "val" if index >= num_videos - val_videos else "train"
        splits[split].append(video_id)
        rng = np.random.default_rng([seed, index])
        frames, boxes = _render(rng, num_frames=num_frames, fps=fps, width=width, height=height)
        path = root / "videos" / f"{video_id}.mp4"
        videos[video_id] = write_video(path, frames, fps=fps, codec=codec, options=_ENCODE_OPTIONS)
        skipped = seconds[rng.integers(len(seconds))] if index % 2 else None
        for second in seconds:
            key = (video_id, time_offset + second)
            people = boxes[second * fps]
            proposals[split][key] = _proposals(rng, [p.box for p in people], width, height)
            if second == skipped:
                excluded[split].append(key)
            else:
                truth[split][key] = people

    return SyntheticAva(
        root=root,
        videos=videos,
        splits=splits,
        **_write_annotations(root / "annotations", truth, excluded, proposals),
        fps=float(fps),
        size=(width, height),
        num_frames=num_frames,
        time_offset=time_offset,
        keyframe_seconds=tuple(time_offset + s for s in seconds),
    )


def _check_arguments(
    num_videos: int, val_videos: int, duration_sec: int, fps: float, size: tuple[int, int]
) -> None:
    if num_videos < 2 or not 1 <= val_videos < num_videos:
        raise VidrayError(
            f"need num_videos >= 2 and 1 <= val_videos < num_videos, got {num_videos}, {val_videos}"
        )
    if duration_sec < 3:
        raise VidrayError(f"duration_sec must be >= 3 for a keyframe to exist, got {duration_sec}")
    if fps != int(fps) or fps < 4:
        raise VidrayError(f"fps must be a whole number >= 4 so keyframes fall on frames, got {fps}")
    width, height = size
    if width < 64 or height < 48:
        raise VidrayError(f"size must be at least 64x48 to hold 2-3 actors, got {width}x{height}")


def _write_annotations(
    directory: Path,
    truth: dict[str, dict[KeyframeKey, list[LabeledBox]]],
    excluded: dict[str, list[KeyframeKey]],
    proposals: dict[str, dict[KeyframeKey, list[ScoredBox]]],
) -> dict[str, Any]:
    """Each split's files under AVA's names, as SyntheticAva's fields of the same names."""
    labels = [Label(i + 1, name, "PERSON_MOVEMENT") for i, name in enumerate(ACTIONS)]
    return {
        "annotations": {
            s: write_annotations(directory / f"ava_{s}_v2.2.csv", truth[s]) for s in truth
        },
        "excluded": {
            s: write_excluded(directory / f"ava_{s}_excluded_timestamps_v2.2.csv", excluded[s])
            for s in excluded
        },
        "proposals": {
            s: write_proposals(directory / f"ava_{s}_predicted_boxes.csv", proposals[s])
            for s in proposals
        },
        "label_map": write_label_map(directory / "ava_action_list_v2.2.pbtxt", labels),
        "eval_label_map": write_label_map(
            directory / "ava_action_list_v2.2_for_activitynet_2019.pbtxt", labels, form="item"
        ),
    }


def _render(
    rng: np.random.Generator, *, num_frames: int, fps: int, width: int, height: int
) -> tuple[np.ndarray, dict[int, list[LabeledBox]]]:
    """The frames of one video, and every actor's labelled box at each keyframe frame."""
    background = _texture(rng, max(width, height))[:height, :width].astype(np.float32)
    background = (0.6 * background + 0.4 * 128).astype(np.uint8)  # actors stand out
    actors = _place_actors(rng, int(rng.integers(2, 4)), width, height)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    boxes: dict[int, list[LabeledBox]] = {}
    half = fps // 2
    for frame in range(num_frames):
        segment_start = frame + half - (frame + half) % fps - half  # frame of (k - 1/2) s
        if frame == 0 or frame == segment_start:
            for actor in actors:
                _choose_actions(rng, actor, fps, width, height)
        phase = 2 * math.pi * (frame - segment_start) / fps
        image = background.copy()
        people = []
        for person_id, actor in enumerate(actors):
            if frame > 0:  # the first frame shows the starting pose
                actor.x += actor.velocity[0]
                actor.y += actor.velocity[1]
                actor.angle += actor.spin
            scale = 1.0 + actor.pulse * math.sin(phase)
            left, top, right, bottom = _draw(image, actor, scale)
            box = box_from_pixels((left, top, right, bottom), width, height)
            people.append(LabeledBox(box, tuple(sorted(actor.actions)), person_id))
        frames[frame] = image
        if frame % fps == 0:
            boxes[frame] = people
    return frames, boxes


def _place_actors(rng: np.random.Generator, count: int, width: int, height: int) -> list[_Actor]:
    """`count` actors at random places, overlapping little where the frame allows."""
    actors: list[_Actor] = []
    for _ in range(count):
        w = rng.uniform(*_ACTOR_WIDTH) * width
        h = rng.uniform(*_ACTOR_HEIGHT) * height
        texture = _texture(rng, int(max(w, h)))
        for _attempt in range(50):
            x, y = _random_centre(rng, w, h, width, height)
            box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
            if all(box_iou(box, _pixel_box(a, 1.0)) < 0.1 for a in actors):
                break
        actors.append(
            _Actor(
                texture=texture,
                width=w,
                height=h,
                x=x,
                y=y,
                angle=rng.uniform(0, 2 * math.pi),
                texture_point=rng.uniform(0, texture.shape[0], size=2),
            )
        )
    return actors


def _random_centre(
    rng: np.random.Generator, w: float, h: float, width: int, height: int
) -> tuple[float, float]:
    grow = 1 + _PULSE_AMPLITUDE[1]  # room to pulse anywhere
    x = rng.uniform(w * grow / 2 + _MARGIN_PX, width - w * grow / 2 - _MARGIN_PX)
    y = rng.uniform(h * grow / 2 + _MARGIN_PX, height - h * grow / 2 - _MARGIN_PX)
    return x, y


def _choose_actions(
    rng: np.random.Generator, actor: _Actor, fps: int, width: int, height: int
) -> None:
    """Draw the actor's actions for the next second, keeping it inside the frame."""
    if (
        actor.actions
        and rng.random() < _KEEP_ACTIONS
        and _fits(actor, actor.velocity, actor.pulse, fps, width, height)
    ):
        return
    for _attempt in range(50):
        horizontal = rng.choice([0, _LEFT, _RIGHT], p=[0.4, 0.3, 0.3])
        vertical = rng.choice([0, _UP, _DOWN], p=[0.4, 0.3, 0.3])
        actions = {int(a) for a in (horizontal, vertical) if a}
        if rng.random() < 0.3:
            actions.add(_PULSE)
        if rng.random() < 0.3:
            actions.add(_SPIN)
        if not actions:
            continue
        dx = {_LEFT: -1, _RIGHT: 1}.get(int(horizontal), 0) * rng.uniform(*_SPEED_PX)
        dy = {_UP: -1, _DOWN: 1}.get(int(vertical), 0) * rng.uniform(*_SPEED_PX)
        pulse = rng.uniform(*_PULSE_AMPLITUDE) if _PULSE in actions else 0.0
        if _fits(actor, (dx, dy), pulse, fps, width, height):
            break
    else:  # cornered: spinning in place always fits
        actions, dx, dy, pulse = {_SPIN}, 0.0, 0.0, 0.0
    spin = math.radians(rng.uniform(*_SPIN_DEG)) * rng.choice([-1, 1]) if _SPIN in actions else 0.0
    actor.actions = frozenset(actions)
    actor.velocity, actor.pulse, actor.spin = (dx, dy), pulse, spin


def _fits(
    actor: _Actor, velocity: tuple[float, float], pulse: float, fps: int, width: int, height: int
) -> bool:
    """Whether the actor stays inside the frame for the next `fps` frames."""
    x = actor.x + velocity[0] * fps
    y = actor.y + velocity[1] * fps
    half_w = actor.width * (1 + pulse) / 2 + _MARGIN_PX
    half_h = actor.height * (1 + pulse) / 2 + _MARGIN_PX
    return all(
        half_w <= cx <= width - half_w and half_h <= cy <= height - half_h
        for cx, cy in ((actor.x, actor.y), (x, y))
    )


def _pixel_box(actor: _Actor, scale: float) -> tuple[int, int, int, int]:
    """The actor's box in whole pixels (left, top, right, bottom), edges exclusive."""
    w = max(round(actor.width * scale), 4)
    h = max(round(actor.height * scale), 4)
    left = round(actor.x - w / 2)
    top = round(actor.y - h / 2)
    return left, top, left + w, top + h


def _draw(image: np.ndarray, actor: _Actor, scale: float) -> tuple[int, int, int, int]:
    """Paint the actor onto `image`; returns its pixel box."""
    left, top, right, bottom = _pixel_box(actor, scale)
    height, width = image.shape[:2]
    left, right = max(left, 0), min(right, width)  # never needed inside the margin; safe
    top, bottom = max(top, 0), min(bottom, height)
    w, h = right - left, bottom - top
    # Texture point p lands at scale * R(angle) @ (p - texture_point) + patch centre.
    cos, sin = math.cos(actor.angle) * scale, math.sin(actor.angle) * scale
    rotation = np.array([[cos, -sin], [sin, cos]])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    matrix = np.hstack([rotation, (centre - rotation @ actor.texture_point)[:, None]])
    patch = cv2.warpAffine(
        actor.texture, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
    )
    patch[[0, -1], :] = 20
    patch[:, [0, -1]] = 20
    image[top:bottom, left:right] = patch
    return left, top, right, bottom


def _proposals(
    rng: np.random.Generator, boxes: list[Box], width: int, height: int
) -> list[ScoredBox]:
    """A person detector's output: jittered true boxes and a few low-scored false ones."""
    found = []
    for box in boxes:
        w, h = box.x2 - box.x1, box.y2 - box.y1
        jitter = rng.normal(0, 0.04, size=4) * np.array([w, h, w, h])
        x1, y1, x2, y2 = (float(v) for v in np.clip(np.array(box) + jitter, 0.0, 1.0))
        if x2 - x1 > 0.01 and y2 - y1 > 0.01:
            found.append(ScoredBox(Box(x1, y1, x2, y2), float(rng.uniform(0.7, 1.0))))
    for _ in range(int(rng.integers(0, 3))):
        w = rng.uniform(*_ACTOR_WIDTH)
        h = rng.uniform(*_ACTOR_HEIGHT)
        x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        false = Box(x1, y1, x1 + w, y1 + h)
        if all(box_iou(false, b) < 0.3 for b in boxes):
            found.append(ScoredBox(false, float(rng.uniform(0.05, 0.5))))
    found.sort(key=lambda p: -p.score)
    return found
