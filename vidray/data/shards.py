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
``height`` and ``width`` give the shape of every entry.
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

# JPEG keeps only 8-bit 1- or 3-channel images; flow's two channels go side by side.
_JPEG_FLOW_AXIS = 1


def encode_images(images: np.ndarray, *, codec: str, quality: int = 90) -> list[bytes]:
    """(N, H, W, C) uint8 with C = 3 (RGB) or 2 (quantized flow) -> one bytes entry per image."""
    if codec == "raw":
        return [np.ascontiguousarray(image).tobytes() for image in images]
    if codec != "jpeg":
        raise VidrayError(f"unknown codec {codec!r}: use raw or jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    out = []
    for image in images:
        if image.shape[-1] == 3:
            ok, buf = cv2.imencode(".jpg", image[..., ::-1], params)  # OpenCV wants BGR
        else:
            ok, buf = cv2.imencode(
                ".jpg", np.concatenate(np.moveaxis(image, -1, 0), _JPEG_FLOW_AXIS), params
            )
        if not ok:
            raise VidrayError(f"JPEG encoding failed for an image of shape {image.shape}")
        out.append(buf.tobytes())
    return out


def decode_images(
    entries: Sequence[bytes], *, codec: str, height: int, width: int, channels: int
) -> np.ndarray:
    """The inverse of `encode_images` for the selected entries -> (N, H, W, C) uint8."""
    out = np.empty((len(entries), height, width, channels), np.uint8)
    for i, entry in enumerate(entries):
        if codec == "raw":
            out[i] = np.frombuffer(entry, np.uint8).reshape(height, width, channels)
        elif channels == 3:
            out[i] = cv2.imdecode(np.frombuffer(entry, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        else:
            gray = cv2.imdecode(np.frombuffer(entry, np.uint8), cv2.IMREAD_GRAYSCALE)
            out[i] = np.stack(np.split(gray, channels, axis=_JPEG_FLOW_AXIS), axis=-1)
    return out


class ShardWriter:
    """Writes windows into one Parquet shard that appears only when complete.

    Rows go to a temporary file in ``tmp_dir`` (same filesystem), in row groups
    of ``rows_per_group`` windows so memory stays bounded on long videos;
    `commit` renames it into place atomically. A crash leaves only the temp
    file, which the next ingest run deletes.
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
            # JPEG and raw uint8 both compress poorly with heavier codecs; zstd-1 is
            # nearly free and still shrinks raw flow (smooth fields) a lot.
            self._writer = pq.ParquetWriter(
                self._tmp, WINDOW_SCHEMA, compression="zstd", compression_level=1
            )
        self._writer.write_table(table)
        self._rows = []

    def commit(self) -> int:
        """Publish the shard; returns its size in bytes."""
        self._flush()
        if self._writer is None:
            raise VidrayError(f"no windows to write for shard {self.path}")
        self._writer.close()
        size = self._tmp.stat().st_size
        storage.upload(self._tmp, self.path)
        return size

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)


def read_windows(paths: Iterable[str | Path], *, columns: list[str] | None = None) -> pa.Table:
    """All rows of some shards, in-process (no Ray): for evaluation and tests."""
    tables = [pq.read_table(p, columns=columns) for p in sorted(map(str, paths))]
    if not tables:
        raise VidrayError("no window shards to read")
    return pa.concat_tables(tables)
