"""The ingest manifest: one row per input file, its journal, and the dataset description.

``manifest.parquet`` says what became of every input file (ingested or
quarantined, with the reason) and which shards hold its windows. With the
journal it is the commit record of an ingest run: each task, once its shard is
in place, records the segments in it in ``_journal/`` (one small file, written
whole), so a run that is stopped or crashes loses no finished segment;
the driver folds the journal into the manifest as videos complete and clears it
at the end. A shard that neither names is an orphan of a crashed run and is
deleted by the next complete one. ``dataset.yaml`` holds what a reader needs to
interpret the shards (classes, base fps, window size, codecs, flow bound), and
the input and layout the dataset comes from, which later runs into the same
output must share (`vidray.data.ingest_check.check_ingest`).
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
        # the video's windows in each of its shards (a shard holds many videos); null in
        # manifests written before shards were packed
        ("shard_windows", pa.list_(pa.int32())),
    ]
)

MANIFEST_FILE = "manifest.parquet"
DATASET_FILE = "dataset.yaml"
WINDOWS_DIR = "windows"
JOURNAL_DIR = "_journal"
TMP_DIR = "_tmp"
# Files of an object store are read and deleted one request each: keep many in flight.
_REQUESTS_IN_FLIGHT = 16

# The parameters that fix how shards look; another value needs another output dir.
STORAGE_KEYS = (
    "ingest.fps",
    "ingest.short_side",
    "ingest.window_frames",
    "ingest.window_stride",
    "ingest.frames_codec",
    "ingest.max_upscale",
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


def _journal_name(shard: str) -> str:
    return Path(shard).with_suffix(".json").name


def write_journal_record(output: str | Path, shard: str, records: list[dict[str, Any]]) -> None:
    """Record the segments a task wrote into ``shard``, in one file written whole."""
    directory = storage.join(output, JOURNAL_DIR)
    storage.makedirs(directory)
    name = _journal_name(shard)
    storage.write_bytes(storage.join(directory, name), json.dumps(records).encode())


def read_journal_record(output: str | Path, shard: str) -> list[dict[str, Any]] | None:
    """The journal records of the task that wrote ``shard``, or None."""
    return _journal_record(storage.join(output, JOURNAL_DIR, _journal_name(shard)))


def read_journal(output: str | Path) -> list[dict[str, Any]]:
    """Every segment the journal records (of every task that recorded itself)."""
    directory = storage.join(output, JOURNAL_DIR)
    names = [
        name
        for name in storage.list_files(directory)
        if name.endswith(".json") and "/" not in name and not name.startswith(".")
    ]
    tasks = _each(lambda name: _journal_record(storage.join(directory, name)), names)
    return [record for records in tasks if records is not None for record in records]


def _journal_record(path: str) -> list[dict[str, Any]] | None:
    try:
        records = json.loads(storage.read_bytes(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # gone meanwhile, or not ours: those segments are simply done again
    return records if isinstance(records, list) else None  # a record of the old layout


def clear_journal(output: str | Path) -> None:
    """Delete the journal once the manifest holds everything it recorded."""
    directory = storage.join(output, JOURNAL_DIR)
    if not storage.is_uri(directory):
        shutil.rmtree(directory, ignore_errors=True)
        return
    _remove_all(storage.join(directory, name) for name in storage.list_files(directory))


def remove_dataset(output: str | Path) -> None:
    """Delete what ingest wrote into ``output`` (ingest.mode=replace): the shards, the
    journal, the manifest and dataset.yaml. Files ingest does not write are left."""
    windows = storage.join(output, WINDOWS_DIR)
    shards = [n for n in storage.list_files(windows) if n.endswith(".parquet") and "/" not in n]
    _remove_all(storage.join(windows, name) for name in shards)
    clear_journal(output)
    for name in (MANIFEST_FILE, DATASET_FILE):
        if storage.is_file(storage.join(output, name)):
            storage.remove(storage.join(output, name))


def _remove_all(paths: Iterable[str]) -> None:
    for _ in _each(storage.remove, list(paths)):
        pass


def _each(fn: Callable[[str], Any], items: list[str]) -> list[Any]:
    """``[fn(item) for item in items]``, several at a time: on an object store each is
    a request that mostly waits."""
    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(_REQUESTS_IN_FLIGHT) as pool:
        return list(pool.map(fn, items))


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


def check_same_parameters(
    output: str | Path, info: dict[str, Any], parameters: dict[str, Any]
) -> None:
    """Refuse to mix, in one output whose dataset.yaml is ``info``, shards written with
    other storage parameters, or videos split by other settings: ``parameters`` are
    this run's (``ingest.fps``, ``ingest.val_fraction``, ...). A key the dataset.yaml
    does not hold (written before it was recorded) is not compared."""
    previous = {**(info.get("storage") or {}), **(info.get("splits") or {})}
    for key, value in parameters.items():
        if key in previous and previous[key] != value:
            raise VidrayError(
                f"{output} was ingested with {key}={previous[key]}, not {value}: "
                "use a new --output, the same value, or ingest.mode=replace to start it afresh"
            )


def split_shards(data_dir: str | Path, *, split: str | None = None) -> list[tuple[str, int]]:
    """(shard file, windows of the split in it) for every shard an ingest output holds of
    one split, or of all: what a reader sizes its tasks by. Sorted by file.

    A video is in one split, and a shard holds videos of one split, so the manifest tells
    which files to read: training never opens the val shards. The counts are exact
    (each row says how many of its windows each of its shards holds); a manifest
    written before shards were packed spreads a video's windows evenly over its shards.
    """
    ingested = [r for r in read_manifest(data_dir) if r["status"] == "ok"]
    rows = [r for r in ingested if split is None or r["split"] == split]
    windows: Counter[str] = Counter()
    for row in rows:
        counts = row.get("shard_windows") or [row["n_windows"] / len(row["shards"])] * len(
            row["shards"]
        )
        for shard, n in zip(row["shards"], counts, strict=True):
            windows[storage.join(data_dir, WINDOWS_DIR, shard)] += n
    if windows:
        return [(path, max(1, round(n))) for path, n in sorted(windows.items())]
    if not ingested:
        raise VidrayError(f"{data_dir} has no ingested videos: run `vidray ingest` first")
    videos = Counter(r["split"] for r in ingested)
    splits = ", ".join(f"{name} ({n} videos)" for name, n in sorted(videos.items()))
    raise VidrayError(f"{data_dir} has no split {split!r}; its splits: {splits}")


def window_files(data_dir: str | Path, *, split: str | None = None) -> list[str]:
    """The shard files of an ingest output, or only those of one split (`split_shards`)."""
    return [path for path, _ in split_shards(data_dir, split=split)]
