"""Real video files for tests, written with PyAV: good ones and hostile ones.

Frames written by `make_video` carry their own index in their content: three
horizontal grey bands, each a base-16 digit (brightness 16 + 14 * digit). The
pattern survives lossy codecs, chroma subsampling and resizing, so
`frame_index` tells which source frame a decoded frame came from. Indices go up
to 4095.

Every function takes the path to write and returns it as a `Path`; the
container follows the extension (.mp4, .mkv, .avi, .ts, .webm, .mov).

    from media import frame_index, make_video  # tests/ is on sys.path under pytest
    path = make_video(tmp_path / "a.mp4", num_frames=30, fps=7)
    assert frame_index(next(iter_frames(path, fps=10, short_side=0))) == 0
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidray.data.synthetic import write_video

__all__ = [
    "DEFAULT_CODECS",
    "MAX_INDEX",
    "SMALL",
    "frame_index",
    "index_frame",
    "make_audio_only",
    "make_cut_after_header",
    "make_mpegts",
    "make_text_file",
    "make_thumbnail_first",
    "make_truncated",
    "make_vfr_video",
    "make_video",
    "make_with_garbage",
    "make_zero_byte",
    "unicode_name",
]

# The encoder each container gets unless a test asks for another.
DEFAULT_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".ts": "libx264",
    ".avi": "mpeg4",
    ".webm": "libvpx",
}

_BANDS = 3
_BASE = 16
_LEVEL0, _STEP = 16, 14  # band brightness = _LEVEL0 + _STEP * digit, from 16 to 226
MAX_INDEX = _BASE**_BANDS - 1
# High quality settings so the bands stay flat (and the index readable) per codec.
_QUALITY = {
    "libx264": {"crf": "10"},
    "mpeg4": {"qscale": "2"},
    "libvpx": {"crf": "4", "b": "2M"},
}

# Ingest overrides for the small test videos: 8-frame windows at short side 32.
SMALL = ["ingest.short_side=32", "ingest.window_frames=8", "ingest.window_stride=8"]


def index_frame(index: int, width: int, height: int, *, grain: int = 0) -> np.ndarray:
    """A uint8 RGB (height, width, 3) frame that encodes `index` (0..MAX_INDEX).

    ``grain > 0`` adds fresh zero-mean noise of that amplitude (at most 6) to every
    frame, so each frame costs the encoder about the same number of bytes; the
    index still reads back.
    """
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index must be 0..{MAX_INDEX}, got {index}")
    if not 0 <= grain <= _STEP // 2 - 1:
        raise ValueError(f"grain must be 0..{_STEP // 2 - 1}, got {grain}")
    frame = np.empty((height, width, 3), np.int16)
    edges = np.linspace(0, height, _BANDS + 1).round().astype(int)
    for band in range(_BANDS):
        digit = index // _BASE ** (_BANDS - 1 - band) % _BASE
        frame[edges[band] : edges[band + 1]] = _LEVEL0 + _STEP * digit
    if grain:
        rng = np.random.default_rng(index)
        frame += rng.integers(-grain, grain + 1, size=(height, width, 1), dtype=np.int16)
    return frame.astype(np.uint8)


def frame_index(frame: np.ndarray) -> int:
    """The index `index_frame` encoded in a (decoded, possibly resized) frame."""
    height, width = frame.shape[:2]
    edges = np.linspace(0, height, _BANDS + 1)
    cols = slice(width // 4, max(width // 4 + 1, 3 * width // 4))
    index = 0
    for band in range(_BANDS):
        # The middle half of each band, away from the edges codecs and scalers blur.
        quarter = (edges[band + 1] - edges[band]) / 4
        top = int(edges[band] + quarter)
        rows = slice(top, max(top + 1, int(edges[band + 1] - quarter)))
        digit = round((frame[rows, cols].mean() - _LEVEL0) / _STEP)
        index = index * _BASE + int(np.clip(digit, 0, _BASE - 1))
    return index


def make_video(
    path: str | Path,
    *,
    num_frames: int = 20,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
    codec: str | None = None,
    pix_fmt: str | None = None,
    timestamps: Sequence[float] | None = None,
    faststart: bool = False,
    grain: int = 0,
    options: dict[str, str] | None = None,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
) -> Path:
    """Write `num_frames` index frames (see `index_frame`) of `size` (width, height).

    `codec` defaults by extension (`DEFAULT_CODECS`); `pix_fmt` defaults to
    yuv420p (yuvj420p for mjpeg), and odd sizes with libx264 switch to yuv444p.
    `timestamps` (seconds, increasing) makes a variable-frame-rate file.
    `faststart` puts the MP4/MOV index before the data, as streaming sites do, so
    a file cut short still has its index. `grain`: see `index_frame`.
    `options` go to the encoder on top of high-quality defaults, e.g. ``{"g": "10"}``
    for a keyframe every 10 frames. `rotation`: a display rotation in degrees
    counterclockwise (the frames are stored as drawn, as a phone stores them);
    `sample_aspect_ratio`: the width of a pixel over its height (anamorphic video).
    """
    path = Path(path)
    codec = codec or DEFAULT_CODECS[path.suffix.lower()]
    pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
    width, height = size
    frames = (index_frame(i, width, height, grain=grain) for i in range(num_frames))
    container_options = None
    if faststart and path.suffix.lower() in (".mp4", ".mov"):
        container_options = {"movflags": "+faststart"}
    return write_video(
        path,
        frames,
        fps=fps,
        codec=codec,
        pix_fmt=pix_fmt,
        options={**_QUALITY.get(codec, {}), **(options or {})},
        timestamps=timestamps,
        container_options=container_options,
        rotation=rotation,
        sample_aspect_ratio=sample_aspect_ratio,
    )


def make_vfr_video(
    path: str | Path, timestamps: Sequence[float], *, size: tuple[int, int] = (64, 48)
) -> Path:
    """A variable-frame-rate video: frame i (showing index i) starts at timestamps[i] s."""
    return make_video(path, num_frames=len(timestamps), size=size, timestamps=timestamps)


def make_mpegts(
    path: str | Path,
    *,
    num_frames: int = 20,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
    start_sec: float = 10.0,
) -> Path:
    """An MPEG-TS like a cut from a broadcast: no frame count, no duration, no
    frame durations, and timestamps starting at `start_sec` instead of 0."""
    timestamps = [start_sec + i / fps for i in range(num_frames)]
    return make_video(path, num_frames=num_frames, fps=fps, size=size, timestamps=timestamps)


def make_zero_byte(path: str | Path) -> Path:
    """An empty file with a video extension."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_file(path: str | Path) -> Path:
    """A text file, whatever its extension (FFmpeg reads *.txt as ANSI art video)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 200)
    return path


def make_truncated(
    path: str | Path, *, fraction: float = 0.5, faststart: bool = True, **video: object
) -> Path:
    """A video cut to `fraction` of its bytes, like an interrupted download.

    Frames carry grain so the cut lands about `fraction` of the way through the
    frames. With ``faststart`` (default) an MP4's index survives and the frames
    before the cut decode; without it the index was at the end and nothing is
    readable. `video` goes to `make_video`.
    """
    path = make_video(path, faststart=faststart, grain=4, **video)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_cut_after_header(path: str | Path, **video: object) -> Path:
    """An MP4 with its index first (faststart), cut right after that header: the
    file opens, but none of the frames it describes is there. `video` goes to
    `make_video`."""
    path = make_video(path, faststart=True, **video)
    data = path.read_bytes()
    offset = 0
    while data[offset + 4 : offset + 8] != b"moov":  # top-level boxes: size, type
        offset += int.from_bytes(data[offset : offset + 4], "big")
    path.write_bytes(data[: offset + int.from_bytes(data[offset : offset + 4], "big")])
    return path


def make_with_garbage(
    path: str | Path, *, garbage_bytes: int = 20_000, seed: int = 0, **video: object
) -> Path:
    """A valid video followed by `garbage_bytes` random bytes. `video` goes to `make_video`."""
    path = make_video(path, **video)
    garbage = np.random.default_rng(seed).integers(0, 256, garbage_bytes, dtype=np.uint8)
    with path.open("ab") as f:
        f.write(garbage.tobytes())
    return path


def _add_still(container: av.container.OutputContainer, *, cover: bool) -> list[av.Packet]:
    """Add a video stream of one grey 80x60 JPEG picture, marked as cover art if
    `cover`; its packets, to mux once every stream is added."""
    still = container.add_stream("mjpeg", rate=1)
    still.width, still.height, still.pix_fmt = 80, 60, "yuvj420p"
    if cover:
        still.disposition = av.stream.Disposition.attached_pic
    picture = av.VideoFrame.from_ndarray(np.full((60, 80, 3), 200, np.uint8), format="rgb24")
    return [*still.encode(picture), *still.encode(None)]


def make_audio_only(
    path: str | Path, *, seconds: float = 1.0, sample_rate: int = 44100, cover: bool = False
) -> Path:
    """A file with one AAC audio stream (a 440 Hz tone) and no video (.m4a, .mp4, .mkv).
    ``cover`` (.mp4, .mkv) adds album art: a one-picture video stream marked as attached picture."""
    path = Path(path)
    samples = int(seconds * sample_rate)
    tone = np.sin(2 * np.pi * 440 * np.arange(samples) / sample_rate).astype(np.float32)
    with av.open(str(path), "w") as container:
        still = _add_still(container, cover=True) if cover else []
        stream = container.add_stream("aac", rate=sample_rate)
        container.mux(still)
        chunk = 1024
        for start in range(0, samples, chunk):
            frame = av.AudioFrame.from_ndarray(
                tone[None, start : start + chunk], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_thumbnail_first(path: str | Path, *, num_frames: int = 20, fps: float = 10.0) -> Path:
    """A Matroska file whose first video stream is a one-picture thumbnail and whose
    second is `num_frames` index frames (64x48, libx264), the video to read."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        still = _add_still(container, cover=False)
        video = container.add_stream("libx264", rate=round(fps), options=_QUALITY["libx264"])
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        container.mux(still)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, 64, 48), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def unicode_name(directory: str | Path, suffix: str = ".mp4") -> Path:
    """A path in `directory` whose name has spaces and non-ASCII characters."""
    return Path(directory) / f"my clip – ñandú café 動画 №1{suffix}"
