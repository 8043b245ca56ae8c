"""What would make ``vidray ingest`` fail, found before Ray starts and without writing.

`check_ingest` checks the config values, an input that lists at least one video,
and an output that is new or holds the dataset of the same input and layout,
stored with the same parameters and split by the same settings. What it found
(`Checked`) is where `vidray.data.ingest.run_ingest` starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vidray import storage
from vidray.config import Config
from vidray.data.manifest import (
    DATASET_FILE,
    STORAGE_KEYS,
    check_same_parameters,
    read_dataset_info,
    read_manifest,
)
from vidray.data.sources import (
    VIDEO_EXTENSIONS,
    SourceListing,
    has_video_files,
    list_sources,
    split_settings,
)
from vidray.errors import VidrayError


@dataclass(frozen=True)
class Checked:
    """What `check_ingest` found: where things are, what the input lists, and the
    dataset.yaml already in the output (None for a new output)."""

    input: str
    output: str
    listing: SourceListing
    info: dict[str, Any] | None


def check_ingest(cfg: Config) -> Checked:
    """Find what would make ``vidray ingest`` fail before it does anything, without Ray
    and without writing: the config values, an input that lists at least one video,
    and an output that is new or holds the dataset of the same input and layout
    (unless ``ingest.mode=replace``), ingested with the same storage parameters and
    split settings (``ingest.split``, ``ingest.val_fraction``, ``ingest.test_fraction``).

    Returns:
        What it found, for `vidray.data.ingest.run_ingest`.

    Raises:
        VidrayError: one line naming the problem and the fix.
    """
    _validate(cfg)
    ingest = cfg.ingest
    source = storage.resolve(ingest.input)
    output = storage.resolve(ingest.output)
    if _same_place(source, output):
        raise VidrayError(
            f"ingest.output {output} is the input folder: choose another --output, "
            "e.g. a folder beside it"
        )
    info = None
    if storage.is_file(storage.join(output, DATASET_FILE)):
        info = read_dataset_info(output)
        if ingest.mode != "replace":
            _check_same_dataset(info, source=source, layout=ingest.layout, output=output)
            check_same_parameters(
                output, info, {**storage_parameters(cfg), **split_parameters(cfg)}
            )
    # The videos already in the dataset stay in their splits (replace starts afresh).
    kept = [] if ingest.mode == "replace" else read_manifest(output)
    listing = list_sources(
        ingest.input,
        layout=ingest.layout,
        split=ingest.split,
        val_fraction=ingest.val_fraction,
        test_fraction=ingest.test_fraction,
        exclude=output,
        kept_splits={row["video_id"]: row["split"] for row in kept if row["status"] == "ok"},
    )
    if ingest.layout in ("folders", "flat") and not has_video_files(listing):
        raise VidrayError(
            f"input {ingest.input} holds no video files (looked for "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))}): check ingest.input"
        )
    if not listing.entries:
        raise VidrayError(f"input {ingest.input} lists no videos: check ingest.input")
    return Checked(input=source, output=output, listing=listing, info=info)


def storage_parameters(cfg: Config) -> dict[str, Any]:
    """The parameters that fix how shards look, as dataset.yaml records them."""
    flat = cfg.flat()
    return {key: flat[key] for key in STORAGE_KEYS}


def split_parameters(cfg: Config) -> dict[str, Any]:
    """The settings that put each video in its split, as dataset.yaml records them."""
    return {
        f"ingest.{name}": getattr(cfg.ingest, name) for name in split_settings(cfg.ingest.layout)
    }


def _same_place(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _check_same_dataset(info: dict[str, Any], *, source: str, layout: str, output: str) -> None:
    """Refuse to mix another input or layout into a dataset (ingest.mode=replace may)."""
    stored = str(info.get("input", ""))
    stored_layout = info.get("layout")
    # Outputs written before inputs were stored resolved hold the path as typed.
    same_input = _same_place(stored if storage.is_uri(stored) else storage.resolve(stored), source)
    if same_input and stored_layout == layout:
        return
    raise VidrayError(
        f"{output} holds the dataset of {stored} (layout {stored_layout}), not of {source} "
        f"(layout {layout}): choose another --output, or set ingest.mode=replace to delete "
        "that dataset and start afresh"
    )


def _validate(cfg: Config) -> None:
    ingest = cfg.ingest
    if not ingest.input:
        raise VidrayError("ingest.input is not set: pass --input PATH or ingest.input=PATH")
    if not ingest.output:
        raise VidrayError("ingest.output is not set: pass --output DIR or ingest.output=DIR")
    if ingest.fps <= 0:
        raise VidrayError(f"ingest.fps must be > 0, got {ingest.fps}")
    if ingest.window_frames < 2:
        raise VidrayError(f"ingest.window_frames must be >= 2, got {ingest.window_frames}")
    if ingest.window_stride < 1:
        raise VidrayError(f"ingest.window_stride must be >= 1, got {ingest.window_stride}")
    if ingest.segment_windows < 1:
        raise VidrayError(f"ingest.segment_windows must be >= 1, got {ingest.segment_windows}")
    if ingest.short_side < 0 or ingest.short_side % 2:
        raise VidrayError(f"ingest.short_side must be even and >= 0, got {ingest.short_side}")
    if ingest.max_upscale != 0 and ingest.max_upscale < 1:
        raise VidrayError(
            f"ingest.max_upscale must be 0 (no limit) or >= 1, got {ingest.max_upscale}"
        )
    if not 1 <= ingest.jpeg_quality <= 100:
        raise VidrayError(f"ingest.jpeg_quality must be in 1..100, got {ingest.jpeg_quality}")
    if cfg.flow.bound <= 0:
        raise VidrayError(f"flow.bound must be > 0, got {cfg.flow.bound}")
