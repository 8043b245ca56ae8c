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

import contextlib
import math
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import av.video
import av.video.reformatter
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

# The boxes an MP4/MOV (ISO base media) file can start with.
_MP4_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})

# Relative tolerance for the container's frame count against duration x rate.
_META_TOLERANCE = 0.01


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` measured about a video's main video stream."""

    duration: float  # seconds from the first frame until the last frame ends
    fps: float  # average frame rate: num_frames / duration
    width: int  # as shown: square pixels, display rotation applied (`_shown_size`)
    height: int
    num_frames: int  # frames in the stream (as stored, not resampled)
    codec: str


@dataclass(frozen=True)
class Window:
    """A run of consecutive grid frames, as stored in one Parquet row."""

    index: int  # window number counted from start_sec
    start_sec: float  # time of the window's first frame, seconds from the video's start
    frames: np.ndarray  # (window_frames, H, W, 3) uint8 RGB
    padded: int  # how many frames repeat a real one (trailing ones, or leading ones for AVA)
    # Grid index of each frame (from start_sec; a repeated frame has its source's):
    # overlapping windows share frames, and ingest encodes a shared one once.
    frame_indices: tuple[int, ...]


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


def output_size(
    width: int, height: int, short_side: int, max_upscale: float = 0.0
) -> tuple[int, int]:
    """(out_w, out_h) with the short side scaled to `short_side` and the aspect kept.

    Both sides are even (>= 2) because downstream encoders and 2x2 pooling want
    them so; an odd `short_side` is rounded down. ``short_side=0`` keeps the source
    size, rounded down to even. ``max_upscale > 0`` caps the enlargement of a source
    smaller than `short_side`: its short side becomes at most ``max_upscale`` times
    its own (a 32x480 strip at short side 128 would otherwise grow to 16x its pixels).
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if short_side < 0:
        raise ValueError(f"short_side must be >= 0, got {short_side}")
    if max_upscale < 0 or 0 < max_upscale < 1:
        raise ValueError(f"max_upscale must be 0 (no limit) or >= 1, got {max_upscale}")
    if short_side == 0:
        return max(2, width - width % 2), max(2, height - height % 2)
    if max_upscale:
        short_side = min(short_side, math.floor(min(width, height) * max_upscale))
    short = max(2, short_side - short_side % 2)
    long = max(2, 2 * round(max(width, height) * short / min(width, height) / 2))
    return (long, short) if width >= height else (short, long)


# -------------------------------------------------------------------------- probe


def probe(path: str | Path) -> VideoInfo:
    """Measure a video's duration, frame rate, size and frame count.

    Container metadata is trusted when it is complete and self-consistent: the
    frame count matches duration x average rate, and the last packets are intact
    and end where the header says. Otherwise every packet is demuxed (no decoding)
    and the numbers come from packet timestamps, the same way `iter_frames` times
    frames. This covers MPEG-TS, Matroska and WebM (no frame count), variable frame
    rate, truncated files and bogus rates. The first frame is always decoded, so a
    valid header over an undecodable stream fails here rather than in ingest.

    Raises:
        VideoError: missing or empty file, not a video, no video stream, or no
            decodable frame.
    """
    path = Path(path)
    with _open(path) as container:
        stream = _main_stream(container)
        first = _first_frame(path, container, stream)
        timing = _metadata_timing(container, stream)
        codec = stream.codec_context.name
        width, height = _shown_size(first, stream)
    if timing is None:
        # A fresh demuxer: seeking back to the start is unreliable without timestamps.
        with _open(path) as container:
            timing = _packet_timing(path, container)
    duration, num_frames = timing
    return VideoInfo(
        duration=duration,
        fps=num_frames / duration,
        width=width,
        height=height,
        num_frames=num_frames,
        codec=codec,
    )


def _open(path: Path) -> av.container.InputContainer:
    """Open `path` for reading; it has a `_main_stream`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except OSError as e:  # a name too long, a folder on the way we may not enter
        raise VideoError(f"{path}: cannot read it ({_reason(e)})") from e
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        cut = _mp4_cut(path)
        if cut:
            raise VideoError(f"{path}: {cut}") from e
        raise VideoError(f"{path}: not a recognised video format ({_reason(e)})") from e
    fmt = container.format.name
    if fmt in _NOT_VIDEO_FORMATS or fmt.endswith("_pipe"):
        container.close()
        raise VideoError(f"{path}: not a video (FFmpeg reads it as '{fmt}')")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(f"{path}: no video stream (streams: {', '.join(kinds)})")
    if not _moving_streams(container):
        container.close()
        raise VideoError(f"{path}: no video stream (only a cover picture)")
    return container


def _mp4_cut(path: Path) -> str | None:
    """Why an MP4/MOV file is truncated or incomplete, from its top-level boxes, or None.

    FFmpeg only says "invalid data" for an MP4 whose index (the ``moov`` box) is
    missing, which is what a download or copy cut short leaves when the index was
    written last; and it opens one cut right after a leading index, then finds no
    frame. Both are told apart from a file that is not a video at all here. A file
    that cannot be read (any more) gives None: the caller's own reason stands.
    """
    try:
        size, boxes, ends_inside = _top_boxes(path)
    except OSError:
        return None
    if not boxes:
        return None
    if ends_inside is not None:
        start, length = boxes[ends_inside.encode()]
        where = f"it ends inside its '{ends_inside}' box ({size - start} of {length} bytes)"
    else:
        where = f"it ends after {size} bytes"
    if b"moov" not in boxes:
        return (
            f"truncated or incomplete MP4/MOV: {where} and has no 'moov' index "
            "(a download, copy or recording cut short); get the whole file again"
        )
    if ends_inside is not None or b"mdat" not in boxes:
        return (
            f"truncated MP4/MOV: {where}, before its video data "
            "(a download or copy cut short); get the whole file again"
        )
    return None


def _top_boxes(path: Path) -> tuple[int, dict[bytes, tuple[int, int]], str | None]:
    """The file's size, the first box of each type at its top level as (offset, declared
    size), and the type of a box the file ends inside, if any; no boxes when the file
    does not start like an MP4/MOV or holds something that is not a box."""
    size = path.stat().st_size
    boxes: dict[bytes, tuple[int, int]] = {}
    with path.open("rb") as file:
        offset = 0
        while offset + 8 <= size:
            file.seek(offset)
            header = file.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:  # a 64-bit size follows the type
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:  # the box runs to the end of the file
                length = size - offset
            if not boxes and kind not in _MP4_FIRST_BOXES:
                return size, {}, None
            if length < 8 or not kind.isascii() or not kind.decode().isprintable():
                return size, {}, None  # not a box: something else, or damage, not a cut
            boxes.setdefault(kind, (offset, length))
            if offset + length > size:
                return size, boxes, kind.decode()
            offset += length
    return size, boxes, None


def _moving_streams(container: av.container.InputContainer) -> list[av.video.VideoStream]:
    """The video streams that are not a still attached picture (cover art)."""
    still = av.stream.Disposition.attached_pic
    return [s for s in container.streams.video if not s.disposition & still]


def _main_stream(container: av.container.InputContainer) -> av.video.VideoStream:
    """The video stream to read: FFmpeg's pick (default disposition, then several
    frames, then bitrate), never cover art. A thumbnail muxed in as the first
    stream (Matroska files can carry one) would otherwise be read as a
    one-frame video and the real one ignored.
    """
    moving = _moving_streams(container)
    best = container.streams.best("video")
    return best if best in moving else moving[0]


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counterclockwise quarter turns that show `frame` upright.

    Phones store portrait video as landscape frames plus a display matrix that
    players apply; ignoring it would train on sideways people. Rotations that
    are not a multiple of 90 degrees (never seen from a camera) round to one.
    """
    return round(frame.rotation / 90) % 4


def _shown_size(frame: av.VideoFrame, stream: av.video.VideoStream) -> tuple[int, int]:
    """(width, height) of `frame` as a player shows it: stretched to square pixels
    by the stream's sample aspect ratio (anamorphic DVD, HDV's 1440x1080 shown as
    1920x1080), then turned by its display rotation."""
    width = frame.width
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if sar and 0.1 < sar < 10 and sar != 1:  # 0/1 means unknown; anything wild is ignored
        width = max(1, round(frame.width * sar))
    if _quarter_turns(frame) % 2:
        return frame.height, width
    return width, frame.height


def _reason(error: Exception) -> str:
    """A one-line reason from an FFmpeg/OS error, without errno noise."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(text.split())


def _first_frame(
    path: Path, container: av.container.InputContainer, stream: av.video.VideoStream
) -> av.VideoFrame:
    """Decode the first frame, or raise VideoError saying why there is none."""
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():  # the final empty packet drains the decoder
                return frame
    except (av.FFmpegError, OSError) as e:
        raise _no_frame(path, _reason(e)) from e
    raise _no_frame(path, "the video stream is empty")


def _no_frame(path: Path, reason: str) -> VideoError:
    """The error for a video none of whose frames decodes: a cut file says so."""
    return VideoError(f"{path}: {_mp4_cut(path) or f'no decodable video frame ({reason})'}")


def _metadata_timing(
    container: av.container.InputContainer, stream: av.video.VideoStream
) -> tuple[float, int] | None:
    """(duration, frames) from container metadata, or None where it can't be trusted."""
    frames, duration, rate = stream.frames, stream.duration, stream.average_rate
    if frames <= 0 or not duration or duration <= 0 or not rate or rate <= 0:
        return None
    if stream.start_time is None:
        return None
    seconds = float(duration * stream.time_base)
    if abs(frames - seconds * float(rate)) > max(1.0, _META_TOLERANCE * frames):
        return None
    # The header can describe frames that are not in the file (a download cut short
    # keeps the MP4 index) or disagree with the timestamps (variable frame rate):
    # check that the last packets are intact and end where the header says.
    # Seeking to the last keyframe keeps this cheap on long videos.
    expected_end = stream.start_time + duration
    end = None
    try:
        container.seek(expected_end, stream=stream, backward=True)
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if packet.is_corrupt or pts is None:
                return None
            packet_end = pts + max(packet.duration or 0, 0)
            end = packet_end if end is None else max(end, packet_end)
    except (av.FFmpegError, OSError):
        return None
    half_frame = 0.5 / float(rate) / stream.time_base
    if end is None or abs(end - expected_end) > max(1.0, half_frame):
        return None
    return seconds, frames


def _packet_timing(path: Path, container: av.container.InputContainer) -> tuple[float, int]:
    """(duration, frames) of a video stream from its packets, without decoding.

    Stops at the first unreadable or cut packet: nothing after it decodes. The
    stream ends where its last frame stops being shown, timed as in `_timed`.
    """
    stream = _main_stream(container)
    count = 0
    top: int | None = None  # the largest pts, its duration, and the next largest pts
    top_duration = 0
    second: int | None = None
    lowest: int | None = None
    untimed = 0.0  # seconds covered by packets that carry no timestamp
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                break
            count += 1
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                untimed += _duration_seconds(packet.duration, stream) or _nominal_interval(stream)
                continue
            lowest = pts if lowest is None else min(lowest, pts)
            if top is None or pts > top:
                second, top, top_duration = top, pts, packet.duration
            elif second is None or pts > second:
                second = pts
    except (av.FFmpegError, OSError):
        pass  # a damaged tail: what was read so far is what can be decoded
    if count == 0:
        raise VideoError(f"{path}: no readable video packets")
    if top is None:
        return untimed, count
    tb = float(stream.time_base)
    origin = stream.start_time if stream.start_time is not None else lowest
    last = (top - origin) * tb
    prev = None if second is None else (second - origin) * tb
    return last + _last_frame_seconds(top_duration, last, prev, stream), count


def _duration_seconds(ticks: int | None, stream: av.video.VideoStream) -> float:
    """A packet/frame duration in seconds; 0.0 where the container gives none."""
    return ticks * float(stream.time_base) if ticks and ticks > 0 else 0.0


def _nominal_interval(stream: av.video.VideoStream) -> float:
    """Seconds per frame from the stream's rate; 25 fps, FFmpeg's default, if none."""
    rate = stream.guessed_rate or stream.average_rate or 25
    return 1.0 / float(rate)


def _last_frame_seconds(
    ticks: int | None, start: float, prev_start: float | None, stream: av.video.VideoStream
) -> float:
    """How long the last frame is shown: its duration, else the previous interval."""
    seconds = _duration_seconds(ticks, stream)
    if seconds > 0:
        return seconds
    if prev_start is not None and start > prev_start:
        return start - prev_start
    return _nominal_interval(stream)


# ------------------------------------------------------------------------- frames


def iter_frames(
    path: str | Path,
    *,
    fps: float,
    short_side: int,
    start_sec: float = 0.0,
    end_sec: float | None = None,
    threads: int = 0,
    errors: list[str] | None = None,
    max_upscale: float = 0.0,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames (H, W, 3) on the grid ``start_sec + k/fps``.

    Grid times run while ``t_k < end_sec`` and the last frame is still shown.
    Each is the frame shown at ``t_k``, resized inside the decoder so its short
    side is `short_side` (0 keeps the size), enlarged at most `max_upscale` times
    (0: no limit; see `output_size`). A source frame picked for several grid
    times is yielded as the same read-only array.
    For ``start_sec > 0`` the decoder seeks to the keyframe before it.
    ``threads`` is the decoder's thread count (0: FFmpeg's choice).

    A decode error after at least one frame ends the stream once the frames before
    it are yielded: with an `errors` list a one-line reason is appended to it
    ("decode stopped at 3.40 s: ..."), otherwise VideoError is raised.

    Raises:
        VideoError: the file cannot be opened, has no decodable frame, or (with
            ``errors=None``) fails to decode part way.
    """
    yield from _grid_frames(
        Path(path),
        fps=fps,
        short_side=short_side,
        start_sec=start_sec,
        first_index=0,
        stop_index=None,
        end_sec=end_sec,
        threads=threads,
        errors=errors,
        max_upscale=max_upscale,
    )


def iter_windows(
    path: str | Path,
    *,
    fps: float,
    short_side: int,
    window_frames: int,
    window_stride: int,
    start_sec: float = 0.0,
    end_sec: float | None = None,
    first_window: int = 0,
    max_windows: int | None = None,
    threads: int = 0,
    errors: list[str] | None = None,
    max_upscale: float = 0.0,
) -> Iterator[Window]:
    """Yield windows of `window_frames` grid frames, `window_stride` frames apart.

    Window i holds grid frames ``[i*stride, i*stride + window_frames)`` of the
    `iter_frames` grid from `start_sec`. Windows ``first_window`` ..
    ``first_window + max_windows - 1`` that fit in the decodable frames are
    yielded. Decoding seeks to the keyframe before `first_window` and stops after
    the last requested window, so ingest can split a long video into segments
    (see `count_windows`) that each decode only their own part; a segment's
    windows equal the same windows of a full decode.

    When the range has 2 <= n < window_frames frames and ``first_window == 0``,
    one window is yielded with its last frame repeated, ``padded = window_frames - n``.
    Only ``window_frames`` frames are held at a time. `threads`, `errors` and
    `max_upscale` are as for `iter_frames`.

    Raises:
        VideoError: ``first_window == 0`` and fewer than 2 frames decode, or the
            file cannot be decoded (see `iter_frames`).
    """
    _check_window_args(window_frames, window_stride)
    if first_window < 0:
        raise ValueError(f"first_window must be >= 0, got {first_window}")
    if max_windows is not None and max_windows < 0:
        raise ValueError(f"max_windows must be >= 0 or None, got {max_windows}")
    if max_windows == 0:
        return
    first_index = first_window * window_stride
    stop_index = None
    if max_windows is not None:
        stop_index = (first_window + max_windows - 1) * window_stride + window_frames
    frames = _grid_frames(
        Path(path),
        fps=fps,
        short_side=short_side,
        start_sec=start_sec,
        first_index=first_index,
        stop_index=stop_index,
        end_sec=end_sec,
        threads=threads,
        errors=errors,
        max_upscale=max_upscale,
    )
    yield from _slide(frames, path, fps, start_sec, first_index, window_frames, window_stride)


def _slide(
    frames: Iterable[np.ndarray],
    path: str | Path,
    fps: float,
    start_sec: float,
    first_index: int,
    window_frames: int,
    window_stride: int,
) -> Iterator[Window]:
    """The windows of grid frames `first_index`, `first_index + 1`, ... (see `iter_windows`)."""
    buffer: deque[np.ndarray] = deque(maxlen=window_frames)
    count = 0
    for k, frame in enumerate(frames, start=first_index):
        buffer.append(frame)
        count += 1
        window_start = k - window_frames + 1
        if window_start >= first_index and window_start % window_stride == 0:
            yield Window(
                index=window_start // window_stride,
                start_sec=start_sec + window_start / fps,
                frames=np.stack(buffer),
                padded=0,
                frame_indices=tuple(range(window_start, k + 1)),
            )
    if first_index > 0 or count >= window_frames:
        return
    if count < 2:
        raise VideoError(
            f"{path}: fewer than 2 decodable frames at {fps:g} fps ({count} found), "
            "too short for a window"
        )
    padded = window_frames - count
    yield Window(
        index=0,
        start_sec=start_sec,
        frames=np.stack([*buffer, *[buffer[-1]] * padded]),
        padded=padded,
        frame_indices=(*range(count), *[count - 1] * padded),
    )


def iter_keyframe_windows(
    path: str | Path,
    *,
    centres: list[int],
    fps: float,
    short_side: int,
    window_frames: int,
    threads: int = 0,
    errors: list[str] | None = None,
    max_upscale: float = 0.0,
) -> Iterator[Window]:
    """Windows of ``window_frames`` grid frames centred on grid frames ``centres`` (sorted).

    The window of centre c holds grid frames ``c - window_frames // 2`` onwards, so
    its keyframe is frame ``window_frames // 2`` of it. Frames before the video's
    start repeat its first frame and frames past its end its last (``padded``
    counts them); a centre past the end of the video gives no window. Windows
    overlap when centres are closer than ``window_frames``: each frame is decoded
    once, in one pass from the first window's start. ``Window.index`` is the
    centre's position in ``centres``.
    """
    if not centres:
        return
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    half = window_frames // 2
    starts = [c - half for c in centres]
    first = max(0, starts[0])
    recent: deque[tuple[int, np.ndarray]] = deque(maxlen=window_frames)
    pending = 0  # the next window to emit

    frames = _grid_frames(
        Path(path),
        fps=fps,
        short_side=short_side,
        start_sec=0.0,
        first_index=first,
        stop_index=starts[-1] + window_frames,
        end_sec=None,
        threads=threads,
        errors=errors,
        max_upscale=max_upscale,
    )
    for index, frame in enumerate(frames, start=first):
        recent.append((index, frame))
        while pending < len(starts) and starts[pending] + window_frames - 1 <= index:
            yield _keyframe_window(pending, starts[pending], recent, window_frames, fps)
            pending += 1
    # The video ended first: windows whose centre it reached, padded with its last frame.
    while recent and pending < len(starts) and centres[pending] <= recent[-1][0]:
        yield _keyframe_window(pending, starts[pending], recent, window_frames, fps)
        pending += 1


def _keyframe_window(
    index: int,
    start: int,
    recent: Iterable[tuple[int, np.ndarray]],
    window_frames: int,
    fps: float,
) -> Window:
    """Window `index` of `iter_keyframe_windows`: grid frames from `start`, out of
    the ``(grid index, frame)`` pairs in `recent`, clamped to the ones there."""
    have = dict(recent)
    lo, hi = min(have), max(have)
    wanted = range(start, start + window_frames)
    sources = tuple(min(max(i, lo), hi) for i in wanted)
    return Window(
        index=index,
        start_sec=start / fps,
        frames=np.stack([have[i] for i in sources]),
        padded=sum(1 for i in wanted if not lo <= i <= hi),
        frame_indices=sources,
    )


def _check_window_args(window_frames: int, window_stride: int) -> None:
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    if window_stride < 1:
        raise ValueError(f"window_stride must be >= 1, got {window_stride}")


def _grid_frames(
    path: Path,
    *,
    fps: float,
    short_side: int,
    start_sec: float,
    first_index: int,
    stop_index: int | None,
    end_sec: float | None,
    threads: int,
    errors: list[str] | None,
    max_upscale: float,
) -> Iterator[np.ndarray]:
    """Grid frames ``first_index <= k < stop_index`` of the grid ``start_sec + k/fps``.

    Starting at a grid index rather than at a time keeps a segment's grid times
    bit-identical to those of a decode from `start_sec`.
    """
    _check_grid_args(fps, start_sec, threads)
    stop = math.inf if stop_index is None else stop_index
    if end_sec is not None:
        stop = min(stop, grid_frame_count(end_sec, fps, start_sec=start_sec))
    k = first_index
    if k >= stop:
        return
    with _open(path) as container:
        stream = _main_stream(container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        failure: list[str] = []
        timed = _timed(_decode_from(container, stream, start_sec + k / fps, failure), stream)
        cur: av.VideoFrame | None = None  # the frame shown at grid time k
        cur_t = cur_duration = 0.0
        prev_t: float | None = None
        for t, duration, frame in timed:
            if cur is None:
                to_rgb = _RgbFrames(path, stream, frame, short_side, max_upscale)
            else:
                # `frame` replaces `cur` at time t: grid times before t show `cur`.
                while k < stop and start_sec + k / fps < t - _TIME_EPS:
                    yield to_rgb(cur)
                    k += 1
                if k >= stop:
                    return
                prev_t = cur_t
            cur, cur_t, cur_duration = frame, t, duration
        if cur is None:
            if failure:
                raise _no_frame(path, failure[0])
            if first_index == 0 and start_sec == 0:
                raise _no_frame(path, "the video stream is empty")
            return  # the range starts after the end of the video
        # End of stream: the last frame is shown until its end.
        end = cur_t + (cur_duration or _last_frame_seconds(None, cur_t, prev_t, stream))
        stop = min(stop, grid_frame_count(end, fps, start_sec=start_sec))
        while k < stop:
            yield to_rgb(cur)
            k += 1
        if failure:
            _stopped_early(path, f"decode stopped at {end:.2f} s: {failure[0]}", errors)


def _stopped_early(path: Path, message: str, errors: list[str] | None) -> None:
    """A decode that failed after some frames: kept in `errors`, else raised."""
    if errors is None:
        raise VideoError(f"{path}: {message}")
    errors.append(message)


def _check_grid_args(fps: float, start_sec: float, threads: int) -> None:
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if start_sec < 0:
        raise ValueError(f"start_sec must be >= 0, got {start_sec}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")


def _decode_from(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    target: float,
    failure: list[str],
) -> Iterator[av.VideoFrame]:
    """Decoded frames, starting from the last keyframe at or before `target` seconds.

    Seeking lands on a keyframe before the target in MP4/Matroska, but MPEG-TS
    seeks by bytes and can overshoot, past the target or past the last keyframe
    (then nothing decodes): seek again further back until the first frame is no
    later than the target. Without a start time (raw streams) the file cannot be
    seeked by time and is decoded from the start.
    """
    if target <= _TIME_EPS or stream.start_time is None:
        yield from _decode(container, stream, failure)
        return
    tb = float(stream.time_base)
    back = 0.0
    while True:
        seek_to = max(0.0, target - back)
        failure.clear()
        try:
            if seek_to > 0.0:
                offset = stream.start_time + int(seek_to / tb)
                container.seek(offset, stream=stream, backward=True)
            else:
                container.seek(0)  # MPEG-TS lands past the first packet when seeking to its pts
        except (av.FFmpegError, OSError) as e:
            failure.append(f"cannot seek to {seek_to:.2f} s: {_reason(e)}")
            return
        frames = _decode(container, stream, failure)
        first = next(frames, None)
        if seek_to == 0.0 or failure:
            break
        if first is not None:
            pts = first.pts if first.pts is not None else first.dts
            if pts is None or (pts - stream.start_time) * tb <= target + _TIME_EPS:
                break
        frames.close()
        back = max(1.0, 2 * back)
    if first is not None:
        yield first
    yield from frames


def _decode(
    container: av.container.InputContainer, stream: av.video.VideoStream, failure: list[str]
) -> Iterator[av.VideoFrame]:
    """Decode `stream` from the demuxer's position; on an error, record it and stop.

    A packet the demuxer flags as corrupt (cut short by a truncation) is not sent
    to the decoder: with frame threading FFmpeg would silently drop the frames
    still in flight. Either way the decoder is then drained, so the good frames
    it holds are not lost. `probe` counts packets up to the same point.
    """
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                failure.append("damaged or truncated data")
                break
            yield from packet.decode()  # the final empty packet drains the decoder
        else:
            return
    except (av.FFmpegError, OSError) as e:
        failure.append(_reason(e))
    with contextlib.suppress(av.FFmpegError, OSError):  # nothing more to salvage
        yield from stream.decode(None)


def _timed(
    frames: Iterator[av.VideoFrame], stream: av.video.VideoStream
) -> Iterator[tuple[float, float, av.VideoFrame]]:
    """(start seconds from the stream's first frame, duration seconds or 0, frame).

    Start times strictly increase: a frame stamped no later than the one before it
    is never shown after it, so it is dropped. A frame with no timestamp starts
    where the previous one ends (raw elementary streams carry none).
    """
    tb = float(stream.time_base)
    origin = stream.start_time
    last_t: float | None = None
    last_duration = 0.0
    for frame in frames:
        duration = _duration_seconds(frame.duration, stream)
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            t = 0.0 if last_t is None else last_t + (last_duration or _nominal_interval(stream))
        else:
            if origin is None:
                origin = pts  # decoding from the start: the first frame is time 0
            t = (pts - origin) * tb
        if last_t is not None and t <= last_t:
            continue
        last_t, last_duration = t, duration
        yield t, duration, frame


class _RgbFrames:
    """Frames of one video as upright RGB of one size, which its first decoded frame
    fixes: `short_side` (not above `max_upscale`), square pixels, turned upright.

    Conversion and resizing happen in swscale, through one reformatter for the
    whole video: ``frame.to_ndarray(width=...)`` would build a new swscale context
    for every frame, which cost more than decoding. A frame shown at several grid
    times is converted once; the result is read-only as it is repeated.
    """

    def __init__(
        self,
        path: Path,
        stream: av.video.VideoStream,
        first: av.VideoFrame,
        short_side: int,
        max_upscale: float,
    ) -> None:
        self.path = path
        self.size = output_size(*_shown_size(first, stream), short_side, max_upscale)
        self.turns = _quarter_turns(first)  # counterclockwise quarter turns to upright
        self.reformatter = av.video.reformatter.VideoReformatter()
        self.last: tuple[av.VideoFrame, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.last is None or self.last[0] is not frame:
            self.last = (frame, self._convert(frame))
        return self.last[1]

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = self.size if self.turns % 2 == 0 else self.size[::-1]
        shrinking = width * height < frame.width * frame.height
        try:
            rgb = self.reformatter.reformat(
                frame,
                width=width,
                height=height,
                format="rgb24",
                interpolation="AREA" if shrinking else "BILINEAR",
            ).to_ndarray()
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(
                f"{self.path}: cannot convert {frame.format.name} frames to RGB ({_reason(e)})"
            ) from e
        if self.turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.turns))
        rgb.flags.writeable = False
        return rgb
