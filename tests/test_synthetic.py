"""The PyAV writer and the motion-only dataset: layout, determinism, motion carries the label."""

from __future__ import annotations

import itertools
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from vidray.data.decode import iter_frames, probe
from vidray.data.synthetic import MOTIONS, write_motion_dataset, write_video
from vidray.errors import VidrayError


def decoded(path) -> np.ndarray:
    return np.stack(list(iter_frames(path, fps=10, short_side=0)))


# ----------------------------------------------------------------- writer


def test_write_video_round_trips_frames(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (6, 48, 64, 3), np.uint8)
    frames = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in noise])
    path = write_video(tmp_path / "v.mp4", frames, fps=10, options={"crf": "10"})
    back = decoded(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 3


def test_write_video_accepts_odd_sizes_by_switching_to_full_chroma(tmp_path):
    frame = np.full((61, 97, 3), (200, 40, 90), np.uint8)
    path = write_video(tmp_path / "odd.mp4", [frame] * 3, fps=10)
    info = probe(path)
    assert (info.width, info.height) == (97, 61)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_write_video_rejects_a_pixel_format_the_encoder_lacks(tmp_path):
    frame = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="mpeg4 cannot write pix_fmt yuv444p"):
        write_video(tmp_path / "v.avi", [frame], fps=10, codec="mpeg4", pix_fmt="yuv444p")


def test_write_video_writes_variable_frame_rate_timestamps(tmp_path):
    times = [0.0, 0.1, 0.45, 0.5, 1.25]
    frames = [np.full((16, 16, 3), 20 * i, np.uint8) for i in range(5)]
    path = write_video(tmp_path / "vfr.mkv", frames, fps=10, timestamps=times)
    with av.open(str(path)) as container:
        got = [float(f.time) for f in container.decode(video=0)]
    assert got == pytest.approx(times, abs=1e-3)


# ---------------------------------------------------------- motion dataset


def test_dataset_is_written_in_the_folders_layout(tmp_path):
    paths = write_motion_dataset(
        tmp_path, classes=["zoom_in", "rotate_cw"], videos_per_class=2, num_frames=8, fps=10.0
    )
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "zoom_in/zoom_in_000.mp4",
        "zoom_in/zoom_in_001.mp4",
        "rotate_cw/rotate_cw_000.mp4",
        "rotate_cw/rotate_cw_001.mp4",
    ]
    info = probe(paths[0])
    assert (info.width, info.height, info.num_frames, info.fps) == (96, 72, 8, 10.0)


def test_the_same_seed_writes_the_same_videos(tmp_path):
    one = write_motion_dataset(tmp_path / "a", classes=2, videos_per_class=2, num_frames=6, seed=3)
    two = write_motion_dataset(tmp_path / "b", classes=2, videos_per_class=2, num_frames=6, seed=3)
    other = write_motion_dataset(
        tmp_path / "c", classes=2, videos_per_class=2, num_frames=6, seed=4
    )
    for a, b, c in zip(one, two, other, strict=True):
        np.testing.assert_array_equal(decoded(a), decoded(b))
        assert not np.array_equal(decoded(a), decoded(c))


def test_a_class_videos_do_not_depend_on_the_other_classes(tmp_path):
    (alone,) = write_motion_dataset(
        tmp_path / "a", classes=["zoom_out"], videos_per_class=1, num_frames=4
    )
    together = write_motion_dataset(tmp_path / "b", classes=8, videos_per_class=1, num_frames=4)
    np.testing.assert_array_equal(decoded(alone), decoded(together[MOTIONS.index("zoom_out")]))


def test_every_video_is_a_different_texture(tmp_path):
    paths = write_motion_dataset(tmp_path, classes=1, videos_per_class=3, num_frames=2)
    firsts = [decoded(p)[0].astype(int) for p in paths]
    assert np.abs(firsts[0] - firsts[1]).mean() > 20
    assert np.abs(firsts[1] - firsts[2]).mean() > 20


@pytest.mark.parametrize("classes", [0, 9, ["spin"], ["zoom_in", "zoom_in"]])
def test_bad_class_choice_is_a_clear_error(tmp_path, classes):
    with pytest.raises(VidrayError, match="classes must be"):
        write_motion_dataset(tmp_path, classes=classes)


def motion_features(frames: np.ndarray) -> np.ndarray:
    """Mean optical flow of a video as (vx, vy, curl, divergence), all in px/frame.

    Image coordinates, y down: clockwise turning content has positive curl.
    """
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    h, w = grey[0].shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    xs -= (w - 1) / 2
    ys -= (h - 1) / 2
    inner = (abs(xs) < 0.4 * w) & (abs(ys) < 0.4 * h)  # content entering at the border
    x, y = xs[inner], ys[inner]
    radius = np.sqrt((x**2 + y**2).mean())
    features = []
    for a, b in itertools.pairwise(grey):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        vx, vy = flow[..., 0][inner], flow[..., 1][inner]
        curl = (vy * x - vx * y).mean() / radius
        div = (vx * x + vy * y).mean() / radius
        features.append((vx.mean(), vy.mean(), curl, div))
    return np.mean(features, axis=0)


def classify_motion(features: np.ndarray) -> str:
    """The motion class whose signed flow component dominates."""
    axis = int(np.argmax(np.abs(features)))
    positive = features[axis] > 0
    return [
        ("translate_right", "translate_left"),
        ("translate_down", "translate_up"),
        ("rotate_cw", "rotate_ccw"),
        ("zoom_in", "zoom_out"),
    ][axis][0 if positive else 1]


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier on standardised features."""
    features = (features - features.mean(0)) / (features.std(0) + 1e-9)
    correct = 0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        classes = np.unique(labels)
        centroids = np.stack([features[keep & (labels == c)].mean(0) for c in classes])
        correct += classes[np.argmin(((centroids - features[i]) ** 2).sum(1))] == labels[i]
    return correct / len(labels)


def test_classes_are_distinguishable_only_by_motion(tmp_path):
    per_class = 4
    paths = write_motion_dataset(tmp_path, classes=8, videos_per_class=per_class, num_frames=6)
    videos = [decoded(p) for p in paths]
    labels = np.repeat(np.arange(len(MOTIONS)), per_class)

    # The motion names the class, with the stated direction conventions.
    assert [classify_motion(motion_features(v)) for v in videos] == [MOTIONS[i] for i in labels]

    # A single frame does not: colour and texture statistics of any one frame
    # classify no better than chance (1/8), frame differences do.
    def appearance(frame: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64)
        edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
        return np.concatenate([frame.mean((0, 1)), frame.std((0, 1)), [edges]])

    single = np.stack([appearance(v[3]) for v in videos])
    assert nearest_centroid_accuracy(single, labels) <= 0.3
    motion = np.stack([motion_features(v) for v in videos])
    assert nearest_centroid_accuracy(motion, labels) >= 0.9


def test_synthetic_and_decode_import_without_ray_or_torch():
    code = (
        "import sys, vidray.data.synthetic, vidray.data.decode; "
        "heavy = {'ray', 'torch'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
