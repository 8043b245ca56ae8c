import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidray.data.shards import (
    WINDOW_SCHEMA,
    ShardWriter,
    StoredEntries,
    decode_crops,
    decode_images,
    encode_images,
)
from vidray.data.sources import video_key
from vidray.errors import VidrayError


def _frames(n=4, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content: JPEG error is then small and comparable across runs
    base = rng.integers(0, 256, (n, h // 4, w // 4, 3), dtype=np.uint8)
    return base.repeat(4, axis=1).repeat(4, axis=2)


def test_raw_frames_round_trip_exactly():
    frames = _frames()
    entries = encode_images(frames, codec="raw")
    assert len(entries) == len(frames)
    back = decode_images(entries, codec="raw", height=24, width=40, channels=3)
    np.testing.assert_array_equal(back, frames)


def test_jpeg_frames_round_trip_closely_and_keep_rgb_order():
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[..., 0] = 200  # pure red: a BGR/RGB swap would move it to channel 2
    back = decode_images(
        encode_images(frames, codec="jpeg", quality=95),
        codec="jpeg",
        height=32,
        width=32,
        channels=3,
    )
    assert np.abs(back.astype(int) - frames).mean() < 3
    assert back[..., 0].mean() > 190 and back[..., 2].mean() < 10


def test_jpeg_flow_keeps_both_channels_apart():
    flow = np.zeros((3, 16, 20, 2), np.uint8)
    flow[..., 0] = 40
    flow[..., 1] = 220
    back = decode_images(
        encode_images(flow, codec="jpeg", quality=95), codec="jpeg", height=16, width=20, channels=2
    )
    assert back.shape == flow.shape
    assert np.abs(back.astype(int) - flow).max() <= 2


def test_raw_flow_round_trips_exactly():
    flow = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 2), dtype=np.uint8)
    back = decode_images(
        encode_images(flow, codec="raw"), codec="raw", height=8, width=10, channels=2
    )
    np.testing.assert_array_equal(back, flow)


def test_video_key_is_stable_and_positive():
    assert video_key("a/b c") == video_key("a/b c")
    assert video_key("a/b c") != video_key("a/b d")
    assert 0 <= video_key("x") < 2**63


def _row(i):
    frames = _frames(n=2)
    return {
        "video_id": "v",
        "video_key": 1,
        "label": 0,
        "label_name": "c",
        "split": "train",
        "window_idx": i,
        "start_sec": float(i),
        "fps": 10.0,
        "height": 24,
        "width": 40,
        "padded": 0,
        "frames_codec": "raw",
        "frames": encode_images(frames, codec="raw"),
        "flow_codec": None,
        "flow": None,
        "flow_bound": 20.0,
    }


def test_shard_appears_only_on_commit(tmp_path):
    writer = ShardWriter(
        tmp_path / "windows" / "a.parquet", tmp_dir=tmp_path / "_tmp", rows_per_group=2
    )
    for i in range(5):
        writer.add(_row(i))
    assert not (tmp_path / "windows" / "a.parquet").exists()  # rows so far live in the temp file
    writer.commit()
    table = pq.read_table(tmp_path / "windows" / "a.parquet")
    assert table.num_rows == 5 and table.schema.equals(WINDOW_SCHEMA)
    assert list(tmp_path.joinpath("_tmp").iterdir()) == []


def test_aborted_shard_leaves_nothing(tmp_path):
    writer = ShardWriter(
        tmp_path / "windows" / "a.parquet", tmp_dir=tmp_path / "_tmp", rows_per_group=1
    )
    writer.add(_row(0))
    writer.abort()
    assert not (tmp_path / "windows").exists() or not any((tmp_path / "windows").iterdir())
    assert list(tmp_path.joinpath("_tmp").iterdir()) == []


def test_unknown_codec_is_an_error():
    from vidray.errors import VidrayError

    with pytest.raises(VidrayError, match="unknown codec"):
        encode_images(_frames(), codec="png")


def _textured(n=3, h=24, w=40, channels=3, seed=1):
    """Detailed content, so a wrong pixel, channel or mirror shows."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, channels), dtype=np.uint8)


def test_jpeg_decode_and_encode_match_the_bgr_flip_exactly():
    """RGB straight from the decoder (and a reused BGR buffer to encode) give the
    pixels and bytes of the old reversed copies."""
    frames = _textured()
    params = [cv2.IMWRITE_JPEG_QUALITY, 90]
    flipped = [cv2.imencode(".jpg", f[..., ::-1], params)[1].tobytes() for f in frames]
    assert encode_images(frames, codec="jpeg") == flipped
    back = decode_images(flipped, codec="jpeg", height=24, width=40, channels=3)
    for entry, image in zip(flipped, back, strict=True):
        bgr = cv2.imdecode(np.frombuffer(entry, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(image, bgr[..., ::-1])


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
@pytest.mark.parametrize("channels", [3, 2])
def test_cuts_equal_decode_then_crop(codec, channels):
    """Each entry decoded once and cut at several corners, mirrored or not: the pixels of
    decoding the whole image, then cropping (and reversing the columns)."""
    entries = encode_images(_textured(channels=channels), codec=codec)
    whole = decode_images(entries, codec=codec, height=24, width=40, channels=channels)
    corners = [(0, 0), (3, 17), (8, 24)]
    for mirror in (False, True):
        cuts = decode_crops(
            entries,
            codec=codec,
            height=24,
            width=40,
            corners=corners,
            mirror=mirror,
            out=np.empty((3, 3, 16, 16, channels), np.uint8),
        )
        for cut, (top, left) in zip(cuts, corners, strict=True):
            region = whole[:, top : top + 16, left : left + 16]
            np.testing.assert_array_equal(cut, region[:, :, ::-1] if mirror else region)


def test_a_damaged_entry_is_a_one_line_error():
    entries = encode_images(_textured(n=1), codec="jpeg")
    with pytest.raises(VidrayError, match=r"^a stored jpeg entry is not a 24x40 image.*ingest"):
        decode_images([entries[0][:50]], codec="jpeg", height=24, width=40, channels=3)
    with pytest.raises(VidrayError, match="stored raw entry"):
        decode_images([b"\0" * 10], codec="raw", height=24, width=40, channels=3)


@pytest.mark.parametrize("binary", [pa.binary(), pa.large_binary()])
def test_stored_entries_are_views_of_the_arrow_column(binary):
    rows = [[b"ab", b"cde"], None, [b"f", b"", b"ghij"], []]
    column = pa.array(rows, pa.list_(binary)).slice(1)  # a batch can start inside an array
    stored = StoredEntries(pa.chunked_array([column]))
    assert [
        None if r is None else [bytes(e) for e in r] for r in map(stored.__getitem__, range(3))
    ] == rows[1:]
    assert [bytes(e) for e in stored[1][-2:]] == [b"", b"ghij"]
    assert np.shares_memory(stored[1][2], np.frombuffer(column.values.buffers()[2], np.uint8))


def _coded_row(i, frames_codec, flow_codec):
    return dict(
        _row(i),
        frames_codec=frames_codec,
        frames=encode_images(_textured(n=4, seed=i), codec=frames_codec),
        flow_codec=flow_codec,
        flow=encode_images(_textured(n=3, channels=2, seed=i), codec=flow_codec),
    )


@pytest.mark.parametrize("codecs", [("jpeg", "raw"), ("raw", "jpeg")])
def test_shard_stores_jpeg_frames_as_they_are_and_compresses_the_rest(tmp_path, codecs):
    """JPEG frames skip zstd (it saves only their headers, for ingest CPU); flow and raw
    entries keep zstd-1; no entry column gets a dictionary or blob statistics."""
    writer = ShardWriter(tmp_path / "a.parquet", tmp_dir=tmp_path / "_tmp")
    writer.add(_coded_row(0, *codecs))
    writer.commit()
    chunks = pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(0)
    stored = {chunks.column(i).path_in_schema: chunks.column(i) for i in range(chunks.num_columns)}
    frames, flow = stored["frames.list.element"], stored["flow.list.element"]
    assert frames.compression == ("UNCOMPRESSED" if codecs[0] == "jpeg" else "ZSTD")
    assert flow.compression == "ZSTD" and stored["video_id"].compression == "ZSTD"
    for entries in (frames, flow):
        assert not entries.has_dictionary_page and not entries.is_stats_set
    assert stored["boxes.list.element"].compression == "ZSTD"


def test_a_shard_written_the_old_way_gives_the_same_clips(tmp_path):
    """Shards written before (zstd-1 on every column, dictionaries, statistics) still read,
    and their clips are those of a shard written today."""
    from vidray.config import ClipConfig
    from vidray.data.clips import ClipSampler
    from vidray.data.shards import read_windows

    rows = [_coded_row(i, "jpeg", "jpeg") for i in range(3)]
    old = pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA)
    pq.write_table(old, tmp_path / "old.parquet", compression="zstd", compression_level=1)
    writer = ShardWriter(tmp_path / "new.parquet", tmp_dir=tmp_path / "_tmp")
    for row in rows:
        writer.add(row)
    writer.commit()
    sampler = ClipSampler(
        ClipConfig(T=2, stride=2, crop=16), flow_L=2, train=False, spatial_views=3
    )
    clips = [
        sampler(read_windows([tmp_path / name], columns=sampler.columns))
        for name in ("old.parquet", "new.parquet")
    ]
    for key in ("frames", "flow", "label"):
        np.testing.assert_array_equal(clips[0][key], clips[1][key])
    assert clips[0]["frames"].shape == (9, 2, 16, 16, 3)
