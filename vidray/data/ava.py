"""The ``ava`` ingest layout: AVA v2.2's files, read into one source entry per video.

    root/videos/<video_id>.<ext>                       full movies or AVA's 15-min cuts
    root/annotations/ava_action_list_v2.2.pbtxt        the label map (classes)
    root/annotations/ava_{split}_v2.2.csv              ground-truth boxes and actions
    root/annotations/ava_{split}_excluded_timestamps_v2.2.csv   (optional)
    root/annotations/ava_{split}_predicted_boxes.csv   person proposals (optional), or
    root/annotations/ava_dense_proposals_{split}.FAIR.recall_93.9.pkl   FAIR's, if no CSV

for split in train, val (each optional, at least one present). Ingest writes
one row per keyframe that has ground truth or proposals and is not excluded:
the window of frames centred on it, its boxes, their actions and the
proposals (see `KEYFRAME_COLUMNS`). A keyframe at annotation second t is at
video time ``t - ingest.ava_time_offset`` (AVA's cuts start at second 900;
0 for full movies). Rows the files hold but the data leaves out (a box
outside [0, 1], an action not in the label map) are reported on the video's
manifest row, never clipped.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from vidray.data.ava_files import (
    Problem,
    read_annotations,
    read_excluded,
    read_label_map,
    read_proposals,
)
from vidray.data.sources import VIDEO_EXTENSIONS
from vidray.errors import VidrayError

LABEL_MAP = "ava_action_list_v2.2.pbtxt"
ANNOTATIONS = "ava_{split}_v2.2.csv"
EXCLUDED = "ava_{split}_excluded_timestamps_v2.2.csv"
# Person proposals: SlowFast's CSV, else FAIR's dense proposals pickle (what
# PySlowFast and MMAction2 train and test AVA with).
PROPOSALS = ("ava_{split}_predicted_boxes.csv", "ava_dense_proposals_{split}.FAIR.recall_93.9.pkl")
AVA_SPLITS = ("train", "val")


def list_ava(root: str) -> tuple[list[dict[str, Any]], list[str], list[int]]:
    """Rows (path, video_id, split, keyframes JSON, problems), the class names and
    their action ids: class ``i`` is the label map's ``i``-th id in ascending order;
    the keyframes carry action ids as in the files."""
    notes = Path(root) / "annotations"
    label_map = read_label_map(_required(notes / LABEL_MAP))
    videos = _videos(Path(root) / "videos")
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # video_id -> the split that listed it first
    splits = [s for s in AVA_SPLITS if (notes / ANNOTATIONS.format(split=s)).is_file()]
    if not splits:
        raise VidrayError(
            f"{notes}: no {ANNOTATIONS.format(split='train')} or "
            f"{ANNOTATIONS.format(split='val')}: not an AVA layout"
        )
    for split in splits:
        excluded_file = notes / EXCLUDED.format(split=split)
        excluded = read_excluded(excluded_file) if excluded_file.is_file() else frozenset()
        truth = read_annotations(
            notes / ANNOTATIONS.format(split=split), label_map=label_map, excluded=excluded
        )
        found = [notes / n.format(split=split) for n in PROPOSALS]
        proposals_file = next((f for f in found if f.is_file()), None)
        proposals = read_proposals(proposals_file) if proposals_file else None
        keyframes: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for (video_id, sec), people in truth.keyframes.items():
            keyframes[video_id][sec] = {
                "sec": sec,
                "boxes": [list(p.box) for p in people],
                "actions": [list(p.action_ids) for p in people],
                "persons": [p.person_id for p in people],
            }
        for (video_id, sec), boxes in (proposals.keyframes if proposals else {}).items():
            if (video_id, sec) in excluded:
                continue
            empty = {"boxes": [], "actions": [], "persons": []}
            frame = keyframes[video_id].setdefault(sec, {"sec": sec, **empty})
            frame["proposals"] = [list(b.box) for b in boxes]
            frame["scores"] = [b.score for b in boxes]
        problems = _by_video([*truth.problems, *(proposals.problems if proposals else [])])
        for video_id in sorted(keyframes):
            path = videos.get(video_id)
            error = None if path else f"no video file for AVA id {video_id} in {root}/videos"
            if video_id in seen:
                error = f"video {video_id} is in both the {seen[video_id]} and {split} annotations"
            seen.setdefault(video_id, split)
            frames = [keyframes[video_id][sec] for sec in sorted(keyframes[video_id])]
            rows.append(
                {
                    "path": str(path or Path(root) / "videos" / video_id),
                    "video_id": video_id,
                    "split": split,
                    "keyframes": json.dumps(frames),
                    "problems": _summary(problems.get(video_id, [])),
                    "error": error,
                }
            )
    classes = [label_map.name(action_id) for action_id in label_map.ids]
    return rows, classes, list(label_map.ids)


def _summary(problems: list[str]) -> str | None:
    if not problems:
        return None
    return f"{len(problems)} annotation rows left out: " + "; ".join(problems)


def _required(path: Path) -> Path:
    if not path.is_file():
        raise VidrayError(f"{path} not found: the ava layout needs the AVA label map there")
    return path


def _videos(folder: Path) -> dict[str, Path]:
    """video_id -> file, for every video file in ``folder``."""
    if not folder.is_dir():
        raise VidrayError(f"{folder} not found: the ava layout reads videos from root/videos/")
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in VIDEO_EXTENSIONS:
            found.setdefault(stem, folder / name)
    return found


def _by_video(problems: list[Problem]) -> dict[str, list[str]]:
    """Problems grouped by the video they are of."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for problem in problems:
        grouped[problem.video_id].append(str(problem))
    return grouped
