"""The ingest manifest: one row per input file, and the dataset description.

``manifest.parquet`` says what became of every input file (ingested or
quarantined, with the reason) and which shards hold its windows; it is the
commit record of an ingest run: a shard that no manifest row names is an
orphan of a crashed run and is deleted by the next one. ``dataset.yaml``
holds what a reader needs to interpret the shards (classes, base fps, window
size, codecs, flow bound) and what must not change between runs writing into
the same output.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from vidray import storage
from vidray.errors import VidrayError

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("video_id", pa.string()),
        ("label", pa.int32()),
        ("label_name", pa.string()),
        ("split", pa.string()),
        ("status", pa.string()),  # ok | quarantined
        ("error", pa.string()),  # the reason when quarantined; a decode note when ok
        ("n_windows", pa.int32()),
        ("padded", pa.int32()),  # frames repeated to fill a video shorter than one window
        ("duration", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("shards", pa.list_(pa.string())),  # shard file names under windows/
    ]
)

MANIFEST_FILE = "manifest.parquet"
DATASET_FILE = "dataset.yaml"
WINDOWS_DIR = "windows"
TMP_DIR = "_tmp"

# The parameters that fix how shards look; another value needs another output dir.
STORAGE_KEYS = (
    "ingest.fps",
    "ingest.short_side",
    "ingest.window_frames",
    "ingest.window_stride",
    "ingest.frames_codec",
    "flow.backend",
    "flow.bound",
    "flow.codec",
)


def read_manifest(output: str | Path) -> list[dict[str, Any]]:
    """The manifest rows of a previous run, or [] for a new output directory."""
    path = storage.join(output, MANIFEST_FILE)
    if not storage.is_file(path):
        return []
    try:
        return pq.read_table(storage.open_input(path)).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise VidrayError(f"{path}: unreadable manifest ({exc}); delete it to re-ingest") from exc


def write_manifest(output: str | Path, rows: list[dict[str, Any]]) -> str:
    """Write the manifest atomically (a temp file and a rename, or one object upload)."""
    rows = sorted(rows, key=lambda r: (r["path"], r["video_id"]))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buffer)
    path = storage.join(output, MANIFEST_FILE)
    storage.write_bytes(path, buffer.getvalue())
    return path


def read_dataset_info(data_dir: str | Path) -> dict[str, Any]:
    """dataset.yaml of an ingest output: classes, storage parameters, counts."""
    path = storage.join(data_dir, DATASET_FILE)
    if not storage.is_file(path):
        raise VidrayError(
            f"{data_dir} is not an ingest output (no {DATASET_FILE}); run `vidray ingest` first"
        )
    return yaml.safe_load(storage.read_bytes(path))


def write_dataset_info(output: str | Path, info: dict[str, Any]) -> None:
    text = yaml.safe_dump(info, sort_keys=False, allow_unicode=True)
    storage.write_bytes(storage.join(output, DATASET_FILE), text.encode())


def check_storage_compatible(output: str | Path, parameters: dict[str, Any]) -> None:
    """Refuse to mix shards written with different storage parameters in one output."""
    path = storage.join(output, DATASET_FILE)
    if not storage.is_file(path):
        return
    previous = (yaml.safe_load(storage.read_bytes(path)) or {}).get("storage", {})
    for key in STORAGE_KEYS:
        if key in previous and previous[key] != parameters[key]:
            raise VidrayError(
                f"{output} was ingested with {key}={previous[key]}, not {parameters[key]}: "
                "use a new --output, or the same value"
            )
