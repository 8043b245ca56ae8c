"""Detection clips: a keyframe row (layout ava) -> frames around the keyframe and its boxes.

A clip takes ``clip.T`` frames at ``clip.stride`` centred on the keyframe, at
the stored size (no crop: a crop would cut people at the edges), and the boxes
a model classifies: the ground truth in training (edges jittered, flipped
with the frames), person proposals above ``detection.proposal_threshold`` in
evaluation (or the ground-truth boxes with ``detection.eval_boxes=truth``).
Boxes leave here normalised, padded to ``detection.max_boxes`` per clip, with
the keyframe's ground truth beside them (what frame-mAP scores against);
`collate` turns a batch into the (batch_index, x1, y1, x2, y2) pixel rows the
detector takes, padding frames of different sizes at the bottom and right so
no box moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vidray.config import ClipConfig, Config, DetectionConfig
from vidray.data.clips import hflip
from vidray.data.manifest import read_dataset_info, window_files
from vidray.data.reading import ShardReader, clips_from_shards, read_samples
from vidray.data.shards import decode_images
from vidray.errors import VidrayError

_COLUMNS = [
    "video_key",
    "keyframe_sec",
    "keyframe_offset",
    "height",
    "width",
    "frames_codec",
    "frames",
    "boxes",
    "box_actions",
    "proposals",
    "proposal_scores",
]


def frame_indices(keyframe: int, window: int, T: int, stride: int) -> list[int]:
    """The T frames at ``stride`` centred on frame ``keyframe`` of a ``window``-frame row,
    kept inside the window (edge frames repeat, as ingest padded the window itself)."""
    first = keyframe - (T // 2) * stride
    return [min(max(first + i * stride, 0), window - 1) for i in range(T)]


@dataclass(frozen=True)
class KeyframeSampler:
    """Keyframe rows (a pyarrow Table) -> a numpy batch of detection clips.

    ``action_ids`` are the label map's ids in output order (`LabelMap.ids`).
    Training draws flips and box jitter from the generator it is given (seeded per
    shard and epoch by `read_samples`), else from fresh entropy.
    """

    clip: ClipConfig
    detection: DetectionConfig
    action_ids: tuple[int, ...]
    train: bool
    video_ids: bool = False

    @property
    def columns(self) -> list[str]:
        return _COLUMNS + (["video_id"] if self.video_ids else [])

    def __call__(
        self, table: pa.Table, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        rng = (rng or np.random.default_rng()) if self.train else None
        index = {action: i for i, action in enumerate(self.action_ids)}
        rows = table.to_pylist()
        limit, classes = self.detection.max_boxes, len(self.action_ids)
        frames = []
        boxes, truth = np.zeros((2, len(rows), limit, 4), np.float32)
        targets, truth_targets = np.zeros((2, len(rows), limit, classes), np.float32)
        scores = np.zeros((len(rows), limit), np.float32)
        counts, truth_counts = np.zeros((2, len(rows)), np.int64)
        for r, row in enumerate(rows):
            clip = self._clip(row)
            true_boxes, true_targets = self._truth(row, index)
            m = min(len(true_boxes), limit)
            truth[r, :m], truth_targets[r, :m], truth_counts[r] = (
                true_boxes[:m],
                true_targets[:m],
                m,
            )
            if self.train or self.detection.eval_boxes == "truth":
                chosen, multi_hot = true_boxes, true_targets
                confidence = np.ones(len(chosen), np.float32)
            else:
                chosen, confidence = self._proposals(row)
                multi_hot = np.zeros((len(chosen), classes), np.float32)
            if rng is not None:
                chosen = _jitter(chosen, self.detection.box_jitter, rng)
                if self.clip.hflip and rng.integers(0, 2):
                    clip, chosen = hflip(clip, chosen)
            n = min(len(chosen), limit)
            boxes[r, :n] = chosen[:n]
            targets[r, :n] = multi_hot[:n]
            scores[r, :n] = confidence[:n]
            counts[r] = n
            frames.append(np.ascontiguousarray(clip))
        batch = {
            "frames": _stack(frames),
            "boxes": boxes,
            "targets": targets,
            "scores": scores,
            "n_boxes": counts,
            "truth_boxes": truth,
            "truth_targets": truth_targets,
            "n_truth": truth_counts,
            "video_key": np.array([row["video_key"] for row in rows], np.int64),
            "keyframe_sec": np.array([row["keyframe_sec"] for row in rows], np.int64),
        }
        if self.video_ids:
            batch["video_id"] = np.array([row["video_id"] for row in rows], dtype=object)
        return batch

    def _clip(self, row: dict[str, Any]) -> np.ndarray:
        """The clip's frames (T, H, W, 3) around the row's keyframe."""
        if row["keyframe_sec"] is None:
            raise VidrayError("train.task=detect needs keyframe rows: ingest with layout ava")
        picked = frame_indices(
            row["keyframe_offset"], len(row["frames"]), self.clip.T, self.clip.stride
        )
        return decode_images(
            [row["frames"][i] for i in picked],
            codec=row["frames_codec"],
            height=row["height"],
            width=row["width"],
            channels=3,
        )

    def _truth(self, row: dict[str, Any], index: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The keyframe's ground-truth boxes (normalised) and their multi-hot actions; an
        action outside ``action_ids`` (not evaluated) is left at 0."""
        found = np.asarray(row["boxes"] or [], np.float32).reshape(-1, 4)
        multi_hot = np.zeros((len(found), len(index)), np.float32)
        for b, actions in enumerate(row["box_actions"] or []):
            for action in actions:
                if action in index:
                    multi_hot[b, index[action]] = 1.0
        return found, multi_hot

    def _proposals(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Person proposals at or above the threshold, highest score first."""
        found = np.asarray(row["proposals"] or [], np.float32).reshape(-1, 4)
        confidence = np.asarray(row["proposal_scores"] or [], np.float32)
        keep = confidence >= self.detection.proposal_threshold
        order = np.argsort(-confidence[keep], kind="stable")
        return found[keep][order], confidence[keep][order]


def _jitter(boxes: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Each edge moved by up to ``amount`` of the box's width or height, kept in [0, 1]."""
    if amount <= 0 or not len(boxes):
        return boxes
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    moved = boxes + rng.uniform(-amount, amount, boxes.shape).astype(np.float32) * size
    moved = np.clip(moved, 0.0, 1.0)
    # An edge must not cross its opposite: keep at least a pixel-scale sliver.
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1e-3)
    return np.clip(moved, 0.0, 1.0)


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    """One array when every clip has the same size, else an object array (Ray Data keeps
    those as variable-shaped tensors; `collate` pads them)."""
    if frames and all(f.shape == frames[0].shape for f in frames):
        return np.stack(frames)
    ragged = np.empty(len(frames), dtype=object)
    ragged[:] = frames
    return ragged


def collate(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A numpy batch of detection clips -> the detector's tensors.

    frames (B, T, H, W, 3) uint8, padded to the largest clip; boxes (K, 5) =
    (batch_index, x1, y1, x2, y2) in pixels; targets (K, C); scores (K,); and the
    ground truth flattened the same way (truth_boxes normalised, truth_owner).
    """
    clips = list(batch["frames"])
    height = max(c.shape[1] for c in clips)
    width = max(c.shape[2] for c in clips)
    frames = torch.zeros((len(clips), clips[0].shape[0], height, width, 3), dtype=torch.uint8)
    for b, clip in enumerate(clips):
        frames[b, :, : clip.shape[1], : clip.shape[2]] = torch.as_tensor(np.asarray(clip))
    sizes = np.array([[c.shape[2], c.shape[1]] * 2 for c in clips], np.float32)  # W, H, W, H
    owner, keep = _unpad(batch["n_boxes"])
    pixels = np.asarray(batch["boxes"])[owner, keep] * sizes[owner]
    truth_owner, truth_keep = _unpad(batch["n_truth"])
    return {
        "frames": frames,
        "boxes": torch.as_tensor(np.concatenate([owner[:, None], pixels], 1), dtype=torch.float32),
        "targets": torch.as_tensor(np.asarray(batch["targets"])[owner, keep]),
        "scores": torch.as_tensor(np.asarray(batch["scores"])[owner, keep]),
        "owner": torch.as_tensor(owner),
        "normalised": torch.as_tensor(np.asarray(batch["boxes"])[owner, keep]),
        "truth_boxes": torch.as_tensor(np.asarray(batch["truth_boxes"])[truth_owner, truth_keep]),
        "truth_targets": torch.as_tensor(
            np.asarray(batch["truth_targets"])[truth_owner, truth_keep]
        ),
        "truth_owner": torch.as_tensor(truth_owner),
        "video_key": torch.from_numpy(np.array(batch["video_key"], np.int64)),
        "keyframe_sec": torch.from_numpy(np.array(batch["keyframe_sec"], np.int64)),
    }


def _unpad(counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """(clip index, slot) of every real box of clips holding ``counts`` boxes each."""
    counts = np.asarray(counts, np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    slot = np.concatenate([np.arange(n) for n in counts]) if len(counts) else np.zeros(0, int)
    return owner, slot.astype(np.int64)


def action_ids(data_dir: str | Path) -> tuple[int, ...]:
    """The label map's action ids of an ava ingest output, in output order."""
    info = read_dataset_info(data_dir)
    if info.get("layout") != "ava" or "class_ids" not in info:
        raise VidrayError(
            f"{data_dir} holds no keyframe rows (layout {info.get('layout')!r}): detection "
            "trains on an ingest with layout ava"
        )
    return tuple(info["class_ids"])


def keyframe_sampler(cfg: Config, *, train: bool, video_ids: bool = False) -> KeyframeSampler:
    return KeyframeSampler(
        cfg.clip, cfg.detection, action_ids(cfg.train.data), train=train, video_ids=video_ids
    )


def read_keyframes(cfg: Config, *, split: str, train: bool, clock: Any = None) -> Any:
    """A Ray Dataset of detection clips of one split (needs a running Ray); training
    draws from ``train.seed`` and the epoch ``clock`` says (`read_samples`)."""
    reader = ShardReader(keyframe_sampler(cfg, train=train), batch_rows=8)
    return read_samples(
        cfg.train.data, split=split, reader=reader, train=train, seed=cfg.train.seed, clock=clock
    )


def iter_keyframe_batches(
    cfg: Config, *, split: str, data: str | Path = "", batch_rows: int = 8
) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation clips of one split in-process, without Ray (numpy batches)."""
    data = data or cfg.train.data
    sampler = KeyframeSampler(
        cfg.clip, cfg.detection, action_ids(data), train=False, video_ids=True
    )
    yield from clips_from_shards(window_files(data, split=split), sampler, batch_rows=batch_rows)
