"""The checks of a training run that need neither torch nor Ray: under a second.

`vidray train` runs them before it imports torch (seconds on a laptop) or starts
Ray (tens of seconds), so a missing ``--data``, a negative rate or a clip longer
than the stored windows is one line at once. The model's own checks follow in
`vidray.train.driver.check_training`, which runs these first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vidray import storage
from vidray.config import Config
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.errors import VidrayError


def check_settings(cfg: Config) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with every path absolute (Ray workers run in other directories), checked
    against the dataset it trains on; and that dataset's ``dataset.yaml``.

    The clip values left unset (None), which the model's declared input fills in,
    are checked later, once resolved (`check_settings_against` again).
    """
    if not cfg.train.data:
        raise VidrayError("train.data is not set: pass --data DIR (an ingest output)")
    train = cfg.train
    backbone = cfg.detection.backbone_checkpoint
    cfg = replace(
        cfg,
        train=replace(
            train,
            data=storage.resolve(train.data),
            storage_path=storage.resolve(train.storage_path),
            resume_from=storage.resolve(train.resume_from) if train.resume_from else "",
        ),
        detection=replace(
            cfg.detection, backbone_checkpoint=storage.resolve(backbone) if backbone else ""
        ),
    )
    info = read_dataset_info(cfg.train.data)
    check_settings_against(cfg, info)
    labeled_split_counts(cfg, info)
    return cfg, info


def check_settings_against(cfg: Config, info: dict[str, Any]) -> None:
    """The settings a user can get wrong for the dataset ``info`` describes, each of
    which would otherwise surface inside a worker, an hour later."""
    for key, values in (("clip.mean", cfg.clip.mean), ("clip.std", cfg.clip.std)):
        if values is not None and (len(values) != 3 or (key == "clip.std" and min(values) <= 0)):
            raise VidrayError(f"{key} needs 3 values (R, G, B; std above 0), got {values}")
    _check_model_name(cfg)
    stored = info["storage"]
    windows = stored["ingest.window_frames"]
    T, crop, flow_L = cfg.clip.T, cfg.clip.crop, cfg.flow.L  # None: the model's, not yet known
    if (T is not None and T < 1) or cfg.clip.stride < 1:
        raise VidrayError(f"clip.T and clip.stride must be >= 1, got {T}, {cfg.clip.stride}")
    span = (T - 1) * cfg.clip.stride + 1 if T is not None else 0
    if span > windows:
        raise VidrayError(
            f"clip.T={T} at clip.stride={cfg.clip.stride} spans {span} frames, "
            f"but {cfg.train.data} stores windows of {windows}: lower clip.T or clip.stride"
        )
    short_side = stored["ingest.short_side"]
    if cfg.train.task == "detect":
        if info.get("layout") != "ava":
            raise VidrayError(
                f"train.task=detect needs keyframe rows, but {cfg.train.data} was ingested "
                f"with layout {info.get('layout')!r}: ingest with layout ava"
            )
    elif short_side and crop is not None and crop > short_side:
        raise VidrayError(
            f"clip.crop={crop} exceeds the stored short side {short_side}: lower clip.crop"
        )
    if flow_L and stored["flow.backend"] == "none":
        raise VidrayError(f"flow.L={flow_L} needs flow, but {cfg.train.data} has none")
    if flow_L and flow_L > windows - 1:
        raise VidrayError(f"flow.L={flow_L} exceeds the {windows - 1} flow fields per window")
    if len(info["classes"]) < 2:
        raise VidrayError(f"{cfg.train.data} has {len(info['classes'])} classes; training needs 2+")
    if cfg.optim.lr < 0:
        raise VidrayError(f"optim.lr must be >= 0, got {cfg.optim.lr}")
    if cfg.train.grad_accum < 1:
        raise VidrayError(f"train.grad_accum must be >= 1, got {cfg.train.grad_accum}")
    if cfg.train.seed < 0:
        raise VidrayError(f"train.seed must be >= 0, got {cfg.train.seed}")


def split_counts(data: str, classes: list[str], labeled: tuple[str, ...]) -> dict[str, int]:
    """Windows per split, from the manifest (no shard is opened), after checking
    that every video's label is one of the dataset's ``classes`` and that the
    ``labeled`` splits (those trained or validated on) have no unlabeled video."""
    counts: dict[str, int] = {}
    for row in read_manifest(data):
        if row["status"] != "ok":
            continue
        label = row["label"]
        if label < 0 and row["split"] in labeled:
            raise VidrayError(
                f"{data}: video {row['video_id']} in split {row['split']!r} has no label; "
                "training and validation need labeled videos"
            )
        if label >= len(classes) or (label >= 0 and row["label_name"] != classes[label]):
            raise VidrayError(
                f"{data}: video {row['video_id']} has label {label} ({row['label_name']!r}), "
                f"but dataset.yaml lists {len(classes)} classes: the manifest and dataset.yaml "
                "disagree, re-ingest into a new output"
            )
        counts[row["split"]] = counts.get(row["split"], 0) + row["n_windows"]
    return counts


def labeled_split_counts(cfg: Config, info: dict[str, Any]) -> dict[str, int]:
    """`split_counts` of the training data, after checking that the splits trained and
    validated on hold windows."""
    # Detection rows carry their labels per box; only classification labels videos.
    labeled = ("train", cfg.train.val_split) if cfg.train.task == "classify" else ()
    counts = split_counts(cfg.train.data, info["classes"], labeled)
    if not counts.get("train"):
        raise VidrayError(f"{cfg.train.data} has no windows in split 'train' (splits: {counts})")
    if not counts.get(cfg.train.val_split):
        raise VidrayError(
            f"{cfg.train.data} has no windows in split '{cfg.train.val_split}' "
            f"(splits: {counts}): set train.val_split"
        )
    return counts


def _check_model_name(cfg: Config) -> None:
    """A registered-model name MLflow takes, for a task that has an MLflow model: found
    here, not after the training the registration follows."""
    name = cfg.train.register_model
    if name and (cfg.train.task != "classify" or not name.strip() or set("/:") & set(name)):
        raise VidrayError(
            f"train.register_model={name!r}: a registered model name without '/' or ':', "
            "for train.task=classify (a detection checkpoint has no MLflow model)"
        )
