"""Decode videos with PyAV: probe, resample onto a fixed time grid, cut windows.

Every video, whatever its frame rate, container or timestamps, is read as frames
on the grid ``t_k = start_sec + k / fps`` (seconds from the first frame). For each
grid time the frame *shown* at that time is taken: the last frame whose
presentation timestamp is <= ``t_k``. A 7 fps source sampled at 10 fps repeats
frames and a 60 fps source drops them, so both land on the same time base. The
stream ends where the last frame stops being shown (its pts plus its duration).

Only selected frames are converted to RGB and resized, inside FFmpeg (swscale),
and at most a few frames are held at once, so a 2-hour film streams in bounded
memory. Every failure a user's file can cause surfaces as `VideoError` with a
one-line message naming the file; no PyAV exception type escapes this module.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.video
import numpy as np

from vidray.errors import VideoError

__all__ = [
    "VideoInfo",
    "Window",
    "count_windows",
    "grid_frame_count",
    "iter_frames",
    "iter_windows",
    "output_size",
    "probe",
]

# Tolerance when comparing a frame's timestamp with a grid time. Containers with
# coarse time bases (Matroska: 1 ms) round frame times, so a frame meant for
# exactly t can be stamped up to half a tick later; it must still be chosen for t.
_TIME_EPS = 1e-3

# Demuxers that accept files which are not videos: "tty" renders any text file
# as ANSI art, and the image demuxers turn a single still into a one-frame stream.
_NOT_VIDEO_FORMATS = frozenset({"tty", "image2"})

# Relative tolerance for the container's frame count against duration x rate.
_META_TOLERANCE = 0.01


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` measured about a video's main video stream."""

    duration: float  # seconds from the first frame until the last frame ends
    fps: float  # average frame rate: num_frames / duration
    width: int
    height: int
    num_frames: int  # frames in the stream (as stored, not resampled)
    codec: str


@dataclass(frozen=True)
class Window:
    """A run of consecutive grid frames, as stored in one Parquet row."""

    index: int  # window number counted from start_sec
    start_sec: float  # time of the window's first frame, seconds from the video's start
    frames: np.ndarray  # (window_frames, H, W, 3) uint8 RGB
    padded: int  # how many trailing frames repeat the last real frame


# --------------------------------------------------------------------------- grid


def grid_frame_count(
    duration: float, fps: float, *, start_sec: float = 0.0, end_sec: float | None = None
) -> int:
    """Number of grid frames ``start_sec + k/fps`` before the end of a video.

    The grid stops at ``min(duration, end_sec)``; `iter_frames` yields exactly this
    many frames for a fully decodable video whose `probe` duration is `duration`.
    """
    limit = duration if end_sec is None else min(duration, end_sec)
    return max(0, math.ceil((limit - start_sec - _TIME_EPS) * fps))


def count_windows(num_frames_at_fps: int, *, window_frames: int, window_stride: int) -> int:
    """Number of windows `iter_windows` yields from `num_frames_at_fps` grid frames.

    ``num_frames_at_fps`` is `grid_frame_count` of the probed duration, so the ingest
    planner can split a long video into segments of windows without decoding it.
    A video shorter than one window but with >= 2 frames gives one padded window.
    """
    _check_window_args(window_frames, window_stride)
    if num_frames_at_fps >= window_frames:
        return (num_frames_at_fps - window_frames) // window_stride + 1
    return 1 if num_frames_at_fps >= 2 else 0


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(out_w, out_h) with the short side scaled to `short_side` and the aspect kept.

    Both sides are even (>= 2) because downstream encoders and 2x2 pooling want
    them so; an odd `short_side` is rounded down. ``short_side=0`` keeps the source
    size, rounded down to even.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if short_side < 0:
        raise ValueError(f"short_side must be >= 0, got {short_side}")
    if short_side == 0:
        return max(2, width - width % 2), max(2, height - height % 2)
    short = max(2, short_side - short_side % 2)
    long = max(2, 2 * round(max(width, height) * short / min(width, height) / 2))
    return (long, short) if width >= height else (short, long)


# -------------------------------------------------------------------------- probe


