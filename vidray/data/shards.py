"""The Parquet window shards: schema, encoding, and the inverse used by the loader.

One row per window (the data contract in DESIGN.md). Frames and flow are stored
as ``list<binary>`` with one entry per frame (per flow field), whatever the
codec:

- ``raw``: the entry is the bytes of a uint8 (H, W, 3) frame (flow: (H, W, 2));
- ``jpeg``: the entry is a JPEG of the frame (flow: a JPEG of the two quantized
  channels side by side, so one decode gives both).

Why a list and not one tensor per window: the loader decodes only the T frames
(and L flow fields) a clip uses out of the W stored, and videos of different
aspect ratios live in one dataset without an extension type that pins a shape.
``height`` and ``width`` give the shape of every entry. The loader reads a batch's
entries in place (`StoredEntries`) and decodes and cuts only the picked ones
(`decode_crops`); how the columns are compressed is `parquet_options`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidray import storage
from vidray.errors import VidrayError

WINDOW_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("video_key", pa.int64()),  # stable integer id of video_id, for per-video metrics
        ("label", pa.int32()),
        ("label_name", pa.string()),
        ("split", pa.string()),
        ("window_idx", pa.int32()),
        ("start_sec", pa.float64()),
        ("fps", pa.float32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("padded", pa.int32()),  # trailing frames that repeat the last real one
        ("frames_codec", pa.string()),
        ("frames", pa.list_(pa.binary())),
        ("flow_codec", pa.string()),
        ("flow", pa.list_(pa.binary())),  # null when ingested with flow.backend=none
        ("flow_bound", pa.float32()),
        # Detection rows (layout ava) only, null otherwise: the window is centred on a
        # keyframe; boxes are normalised (x1, y1, x2, y2), flattened, one per person.
        ("keyframe_sec", pa.int32()),  # the annotation second (AVA timestamp)
        ("keyframe_offset", pa.int32()),  # the keyframe's frame within the window
        ("boxes", pa.list_(pa.float32())),
        ("box_actions", pa.list_(pa.list_(pa.int32()))),  # action ids of each box
        ("person_ids", pa.list_(pa.int32())),
        ("proposals", pa.list_(pa.float32())),  # person detector boxes, flattened likewise
        ("proposal_scores", pa.list_(pa.float32())),
    ]
)

# A stored entry: bytes, or a uint8 view of an Arrow buffer (`StoredEntries`).
Entry = bytes | np.ndarray

# JPEG keeps only 8-bit 1- or 3-channel images; flow's two channels go side by side.
_JPEG_FLOW_AXIS = 1


def encode_images(images: np.ndarray, *, codec: str, quality: int = 90) -> list[bytes]:
    """(N, H, W, C) uint8 with C = 3 (RGB) or 2 (quantized flow) -> one bytes entry per image."""
    if codec == "raw":
        return [np.ascontiguousarray(image).tobytes() for image in images]
    if codec != "jpeg":
        raise VidrayError(f"unknown codec {codec!r}: use raw or jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    # OpenCV encodes BGR: one buffer, reused, takes each frame's channels swapped.
    bgr = np.empty(images.shape[1:], np.uint8) if images.shape[-1] == 3 else None
    out = []
    for image in images:
        if bgr is not None:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR, dst=bgr), params)
        else:
            ok, buf = cv2.imencode(
                ".jpg", np.concatenate(np.moveaxis(image, -1, 0), _JPEG_FLOW_AXIS), params
            )
        if not ok:
            raise VidrayError(f"JPEG encoding failed for an image of shape {image.shape}")
        out.append(buf.tobytes())
    return out


def _decoded(entry: Entry, *, codec: str, height: int, width: int, channels: int) -> np.ndarray:
    """One stored entry as an image, without a copy where the codec allows: a raw entry
    is a view (H, W, C) of its bytes, a JPEG frame decodes straight to RGB (H, W, 3), and a
    JPEG flow entry is its side-by-side grey image (H, C*W) (see `encode_images`)."""
    data = np.frombuffer(entry, np.uint8)
    if codec == "raw":
        image = (
            data.reshape(height, width, channels)
            if data.size == height * width * channels
            else None
        )
    elif channels == 3:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)  # the pixels of BGR reversed
    else:
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    side_by_side = codec == "jpeg" and channels != 3
    stored = (height, width * channels) if side_by_side else (height, width)
    if image is None or image.shape[:2] != stored:
        raise VidrayError(
            f"a stored {codec} entry is not a {height}x{width} image: its shard is damaged; "
            "delete it and run `vidray ingest` again with the same config"
        )
    return image


def cut_region(image: np.ndarray, top: int, left: int, mirror: bool, out: np.ndarray) -> None:
    """Copy the ``out``-sized region of ``image`` at (top, left) into ``out`` (h, w, C),
    mirrored left to right if asked; a side-by-side flow image gives one channel per strip.

    OpenCV copies: a mirrored numpy copy goes pixel by pixel (40x slower than cv2.flip),
    and so does writing one channel of an interleaved image (4x slower than cv2.merge)."""
    height, width, channels = out.shape
    if image.ndim == 3:
        region = image[top : top + height, left : left + width]
        if mirror:
            cv2.flip(region, 1, dst=out)
        else:
            out[...] = region
        return
    strip = image.shape[1] // channels
    regions = [
        image[top : top + height, c * strip + left : c * strip + left + width]
        for c in range(channels)
    ]
    cv2.merge([cv2.flip(r, 1) for r in regions] if mirror else regions, dst=out)


def decode_crops(
    entries: Sequence[Entry],
    *,
    codec: str,
    height: int,
    width: int,
    corners: Sequence[tuple[int, int]],
    out: np.ndarray,
    mirror: bool = False,
) -> np.ndarray:
    """The selected entries of (height, width) images, each decoded once and cut at every
    (top, left) corner into ``out`` (M corners, N entries, h, w, C), mirrored left to right
    if ``mirror``: besides a JPEG decoder's own output, the only copy of a pixel is the
    one kept (a raw entry is cut straight from Arrow's buffer)."""
    for i, entry in enumerate(entries):
        image = _decoded(entry, codec=codec, height=height, width=width, channels=out.shape[-1])
        for m, (top, left) in enumerate(corners):
            cut_region(image, top, left, mirror, out[m, i])
    return out


def decode_images(
    entries: Sequence[Entry], *, codec: str, height: int, width: int, channels: int
) -> np.ndarray:
    """The inverse of `encode_images` for the selected entries -> (N, H, W, C) uint8."""
    out = np.empty((1, len(entries), height, width, channels), np.uint8)
    return decode_crops(
        entries, codec=codec, height=height, width=width, corners=[(0, 0)], out=out
    )[0]


class _RowEntries(Sequence):
    """One row's entries of a list<binary> column: entry i is a view of Arrow's buffer."""

    def __init__(self, data: np.ndarray, starts: np.ndarray):
        self._data, self._starts = data, starts

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index: int | slice) -> Any:  # an entry, or a list of them
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self._data[self._starts[index] : self._starts[index + 1]]


class StoredEntries:
    """A batch's ``frames`` or ``flow`` column read in place: ``column[row]`` is that row's
    entries (None where null), views of Arrow's values buffer, so a clip copies only the
    entries it picks (no Python bytes of every stored frame, as to_pylist would make)."""

    def __init__(self, column: pa.ChunkedArray | pa.Array):
        if isinstance(column, pa.ChunkedArray):
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        values = column.values
        offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
        _, offsets, data = values.buffers()
        self._starts = np.frombuffer(offsets, offset_type)[
            values.offset : values.offset + len(values) + 1
        ]
        self._data = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        self._rows = column.offsets.to_numpy()
        self._valid = column.is_valid().to_numpy(zero_copy_only=False)

    def __len__(self) -> int:
        return len(self._valid)

    def __getitem__(self, row: int) -> _RowEntries | None:
        if not self._valid[row]:
            return None
        return _RowEntries(self._data, self._starts[self._rows[row] : self._rows[row + 1] + 1])


# Columns of per-frame entries: unique blobs, read only to be decoded.
_ENTRY_COLUMNS = ("frames", "flow")


def _leaves(name: str, kind: pa.DataType) -> list[str]:
    """Parquet's paths of a column's leaves (a list's values live at ``name.list.element``)."""
    if pa.types.is_list(kind):
        return _leaves(f"{name}.list.element", kind.value_type)
    return [name]


def parquet_options(row: dict[str, Any]) -> dict[str, Any]:
    """How a shard's columns are stored (``pq.ParquetWriter`` keywords), from its first
    row's codecs; shards stored either way read the same (readers need none of this).

    JPEG frames are stored as they are: zstd saved only their headers (0.5-10% of the
    column) for compression CPU at every ingest. Everything else takes zstd-1, nearly
    free: flow is mostly near-zero motion, so even its JPEGs shrink ~3x and raw fields
    ~11x. Entries get no dictionary (the writer would hash every unique blob, then give
    up) and no min/max statistics of blobs.
    """
    compression, plain = {}, []
    for field in WINDOW_SCHEMA:
        stored_as_is = field.name == "frames" and row.get("frames_codec") == "jpeg"
        for leaf in _leaves(field.name, field.type):
            compression[leaf] = "none" if stored_as_is else "zstd"
            if field.name not in _ENTRY_COLUMNS:
                plain.append(leaf)
    return {
        "compression": compression,
        "compression_level": {leaf: 1 for leaf, codec in compression.items() if codec == "zstd"},
        "use_dictionary": plain,
        "write_statistics": plain,
    }


class ShardWriter:
    """Writes windows into one Parquet shard that appears only when complete.

    Rows go to a temporary file in ``tmp_dir`` (same filesystem), in row groups
    of ``rows_per_group`` windows so memory stays bounded on long videos;
    `finish` completes that file and `commit` renames it into place atomically,
    so whatever must be recorded before the shard is visible can be written in
    between. A crash leaves only the temp file, which the next ingest run deletes.
    """

    def __init__(self, path: str | Path, *, tmp_dir: str | Path, rows_per_group: int = 4):
        self.path = str(path)  # a local path or a URI (`vidray.storage`)
        tmp_dir = Path(tmp_dir)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        stem = Path(self.path.rsplit("/", 1)[-1]).stem
        self._tmp = tmp_dir / f"{stem}.{uuid.uuid4().hex}.tmp"
        self._rows: list[dict[str, Any]] = []
        self._rows_per_group = rows_per_group
        self._writer: pq.ParquetWriter | None = None
        self._finished = False
        self.num_rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.num_rows += 1
        if len(self._rows) >= self._rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=WINDOW_SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._tmp, WINDOW_SCHEMA, **parquet_options(self._rows[0])
            )
        self._writer.write_table(table)
        self._rows = []

    def finish(self) -> int:
        """Complete the temporary file, publishing nothing; its size in bytes."""
        self._flush()
        if self._writer is None:
            raise VidrayError(f"no windows to write for shard {self.path}")
        if not self._finished:
            self._writer.close()
            self._finished = True
        return self._tmp.stat().st_size

    def commit(self) -> int:
        """Publish the shard (finishing it if need be); returns its size in bytes."""
        size = self.finish()
        storage.upload(self._tmp, self.path)
        return size

    def abort(self) -> None:
        if self._writer is not None and not self._finished:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)


def read_windows(paths: Iterable[str | Path], *, columns: list[str] | None = None) -> pa.Table:
    """All rows of some shards, in-process (no Ray): for evaluation and tests."""
    tables = [pq.read_table(p, columns=columns) for p in sorted(map(str, paths))]
    if not tables:
        raise VidrayError("no window shards to read")
    return pa.concat_tables(tables)
