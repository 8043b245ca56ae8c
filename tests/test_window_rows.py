"""A segment's rows: overlapping windows share their frames' encodings and flow fields."""

import json

import cv2
import numpy as np
import pytest

from vidray.config import FlowConfig, IngestConfig
from vidray.data import decode, window_rows
from vidray.data.flow import load_flow_estimator, quantize_flow
from vidray.data.shards import encode_images
from vidray.data.synthetic import write_video

# Overlapping windows, as configs/demo.yaml has them (16 frames, stride 8), smaller.
INGEST = IngestConfig(fps=10, short_side=0, window_frames=6, window_stride=2)
FLOW = FlowConfig(backend="dis", codec="raw")


@pytest.fixture(scope="module")
def moving_video(tmp_path_factory):
    """17 frames of a smooth texture drifting right and down: flow that is not zero."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 2)
    frames = [np.roll(texture, (t, 2 * t), axis=(0, 1))[16:64, 16:80] for t in range(17)]
    return write_video(tmp_path_factory.mktemp("rows") / "moving.mp4", frames, fps=10)


def segment(path, **fields):
    return {
        "video_id": "moving",
        "label": 0,
        "label_name": "moving",
        "split": "train",
        "path": str(path),
        "start_sec": 0.0,
        "end_sec": None,
        "first_window": 0,
        "max_windows": -1,
        **fields,
    }


class Counted:
    """A real DIS estimator that counts the frame pairs it computes flow for."""

    def __init__(self):
        self.estimator = load_flow_estimator("dis", dis_preset=FLOW.dis_preset)
        self.per_pair = self.estimator.per_pair  # what ingest's own estimator says
        self.pairs = 0

    def __call__(self, frames):
        self.pairs += len(frames) - 1
        return self.estimator(frames)


def rows_with_counts(seg, ingest, monkeypatch):
    """segment_rows' rows, with how many frames it encoded and pairs it computed flow for."""
    counted = Counted()
    encoded = {"frames": 0}

    def counting_encode(images, **kwargs):
        if images.shape[-1] == 3:
            encoded["frames"] += len(images)
        return encode_images(images, **kwargs)

    monkeypatch.setattr(window_rows, "flow_estimator", lambda flow: counted)
    monkeypatch.setattr(window_rows, "encode_images", counting_encode)
    rows = list(window_rows.segment_rows(seg, ingest=ingest, flow=FLOW, errors=[]))
    return rows, encoded["frames"], counted.pairs


def window_by_window(window):
    """What a row holds when each window is encoded on its own (ingest before reuse)."""
    fields = load_flow_estimator("dis", dis_preset=FLOW.dis_preset)(window.frames)
    return {
        "frames": encode_images(window.frames, codec=INGEST.frames_codec, quality=90),
        "flow": encode_images(quantize_flow(fields, FLOW.bound), codec=FLOW.codec),
        "window_idx": window.index,
        "start_sec": window.start_sec,
        "padded": window.padded,
    }


def assert_rows_equal(rows, windows):
    assert len(rows) == len(windows) > 0
    for row, window in zip(rows, windows, strict=True):
        expected = window_by_window(window)
        assert {key: row[key] for key in expected} == expected


@pytest.mark.parametrize("first_window", [0, 2])
def test_overlapping_windows_are_encoded_once_and_equal_window_by_window_rows(
    moving_video, monkeypatch, first_window
):
    seg = segment(moving_video, first_window=first_window, max_windows=4)
    rows, frames_encoded, pairs = rows_with_counts(seg, INGEST, monkeypatch)
    windows = list(
        decode.iter_windows(
            moving_video,
            fps=10,
            short_side=0,
            window_frames=6,
            window_stride=2,
            first_window=first_window,
            max_windows=4,
        )
    )
    assert [w.index for w in windows] == list(range(first_window, first_window + 4))
    assert_rows_equal(rows, windows)
    # 4 windows of 6 frames, 2 apart, cover 12 distinct frames and 11 pairs.
    assert (frames_encoded, pairs) == (12, 11)


def test_a_padded_window_encodes_its_repeated_frame_once(tmp_path, monkeypatch):
    short = write_video(tmp_path / "short.mp4", np.zeros((4, 48, 64, 3), np.uint8) + 90, fps=10)
    rows, frames_encoded, pairs = rows_with_counts(segment(short), INGEST, monkeypatch)
    (window,) = decode.iter_windows(short, fps=10, short_side=0, window_frames=6, window_stride=2)
    assert window.padded == 2 and window.frame_indices == (0, 1, 2, 3, 3, 3)
    assert_rows_equal(rows, [window])
    # 3 real pairs and one (last, last) pair, which the padding repeats twice.
    assert (frames_encoded, pairs) == (4, 4)


def test_close_keyframes_share_frames_padded_at_both_ends(moving_video, monkeypatch):
    # Keyframes at grid frames 1, 3 and 16 (the last): windows reach past both ends.
    boxes = {"boxes": [], "actions": [], "persons": []}
    keyframes = [{"sec": sec, **boxes} for sec in (0.1, 0.3, 1.6)]
    seg = segment(moving_video, keyframes=json.dumps(keyframes))
    rows, frames_encoded, pairs = rows_with_counts(seg, INGEST, monkeypatch)
    windows = list(
        decode.iter_keyframe_windows(
            moving_video, centres=[1, 3, 16], fps=10, short_side=0, window_frames=6
        )
    )
    assert [w.padded for w in windows] == [2, 0, 2]
    assert_rows_equal(rows, windows)
    # Frames 0..5 and 13..16; pairs (0, 0), 0..5 pairwise, 13..16 pairwise, (16, 16).
    assert (frames_encoded, pairs) == (10, 10)


class FramesSeen:
    """An estimator whose pairs depend on what they are computed with, as batched
    RAFT's may: each pair's flow is the number of frames in the call."""

    backend = "test"
    per_pair = False

    def __call__(self, frames):
        return np.full((len(frames) - 1, *frames.shape[1:3], 2), len(frames), np.float32)


def test_an_estimator_whose_pairs_depend_on_the_window_gets_every_window_whole(moving_video):
    coder = window_rows.WindowCoder(ingest=INGEST, flow=FLOW, estimator=FramesSeen())
    windows = list(
        decode.iter_windows(moving_video, fps=10, short_side=0, window_frames=6, window_stride=2)
    )
    for window in windows:
        whole = quantize_flow(FramesSeen()(window.frames), FLOW.bound)
        assert coder.row(segment(moving_video), window)["flow"] == encode_images(whole, codec="raw")
