"""Synthetic videos: a generic PyAV writer and the motion-only dataset.

In the motion dataset appearance carries no label: every video is a fresh random
smooth texture (coloured noise plus a few blobs), and the class is only how the
texture moves. A single-frame model must stay at chance on it while flow and 3D
models learn it, which is the test that temporal modeling is real.

Conventions (image coordinates: x right, y down, as seen on screen):
``translate_left`` means the content moves left; ``rotate_cw`` turns the content
clockwise; ``zoom_in`` makes the content grow (the camera moves closer).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from vidray.errors import VidrayError

__all__ = ["MOTIONS", "write_motion_dataset", "write_video"]

MOTIONS: tuple[str, ...] = (
    "translate_left",
    "translate_right",
    "translate_up",
    "translate_down",
    "rotate_cw",
    "rotate_ccw",
    "zoom_in",
    "zoom_out",
)

# Pixel formats with subsampled chroma, and the full-chroma format to use instead
# when the frame size is odd (x264/x265 reject odd sizes with subsampled chroma).
_FULL_CHROMA = {
    "yuv420p": "yuv444p",
    "yuvj420p": "yuvj444p",
    "yuv422p": "yuv444p",
    "yuvj422p": "yuvj444p",
    "nv12": "yuv444p",
    "nv21": "yuv444p",
}
_EVEN_SIZE_ENCODERS = frozenset({"libx264", "libx264rgb", "libx265", "libopenh264"})

# Time base for variable-frame-rate writes: 90 kHz, as MPEG uses.
_VFR_TIME_BASE = Fraction(1, 90000)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray] | np.ndarray,
    *,
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    timestamps: Sequence[float] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
) -> Path:
    """Encode uint8 RGB frames (H, W, 3), or one (N, H, W, 3) array, to `path`.

    The container follows the file extension (.mp4, .mkv, .avi, .ts, .webm ...).
    `options` go to the encoder (e.g. ``{"crf": "18"}``), `container_options` to
    the muxer (e.g. ``{"movflags": "+faststart"}``). Frames are ``1/fps`` apart
    unless `timestamps` gives each frame's presentation time in seconds (strictly
    increasing), which writes a variable-frame-rate stream; `fps` is then only
    the nominal rate. `rotation` (degrees counterclockwise) is written as the
    stream's display matrix, as phones store portrait video: players, and
    vidray's decoder, turn the frames by it to show them. `sample_aspect_ratio`
    marks the pixels as non-square (anamorphic video): players, and vidray's
    decoder, stretch each frame's width by it.

    An odd frame size with a subsampled `pix_fmt` on an encoder that needs even
    sizes (libx264) switches to the full-chroma format (yuv420p -> yuv444p);
    where the encoder has none, ValueError says so.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    height, width = _check_frame(first, None, 0)
    pix_fmt = _pixel_format(path, codec, pix_fmt, width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(path), "w", options=container_options or {}) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001 * 1000))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            _set_stream(stream, options, rotation, sample_aspect_ratio, timestamps is not None)
            for frame in _video_frames(
                itertools.chain([first], iterator), (height, width), timestamps
            ):
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except av.FFmpegError as e:
        path.unlink(missing_ok=True)  # never leave a half-written video behind
        raise ValueError(
            f"{path}: {codec} could not encode {width}x{height} {pix_fmt} frames ({e})"
        ) from e
    except ValueError as e:
        path.unlink(missing_ok=True)
        raise ValueError(f"{path}: {e}") from e
    return path


def _set_stream(
    stream: av.video.VideoStream,
    options: dict[str, str] | None,
    rotation: int,
    sample_aspect_ratio: Fraction | None,
    variable_rate: bool,
) -> None:
    """The encoder options and the stream's metadata (see `write_video`)."""
    if options:
        stream.options = dict(options)
    if rotation:
        stream.set_display_rotation(rotation)
    if sample_aspect_ratio is not None:
        stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
    if variable_rate:  # a time base fine enough for any frame's own time
        stream.codec_context.time_base = _VFR_TIME_BASE
        stream.time_base = _VFR_TIME_BASE


def _pixel_format(path: Path, codec: str, pix_fmt: str, width: int, height: int) -> str:
    """`pix_fmt`, or its full-chroma twin where the encoder needs even sizes and the
    frame has an odd one; ValueError if the encoder cannot write it at all."""
    if (width % 2 or height % 2) and codec in _EVEN_SIZE_ENCODERS and pix_fmt in _FULL_CHROMA:
        pix_fmt = _FULL_CHROMA[pix_fmt]
    supported = {f.name for f in av.codec.Codec(codec, "w").video_formats or ()}
    if supported and pix_fmt not in supported:
        raise ValueError(
            f"{path}: encoder {codec} cannot write pix_fmt {pix_fmt} at {width}x{height}; "
            f"it supports {', '.join(sorted(supported))}"
        )
    return pix_fmt


def _video_frames(
    arrays: Iterable[np.ndarray], size: tuple[int, int], timestamps: Sequence[float] | None
) -> Iterator[av.VideoFrame]:
    """Each array as an rgb24 frame, stamped with its timestamp where `timestamps` are given."""
    previous = -1
    for index, array in enumerate(arrays):
        _check_frame(array, size, index)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        if timestamps is not None:
            if index >= len(timestamps):
                raise ValueError(f"more frames than timestamps ({len(timestamps)})")
            pts = round(timestamps[index] / _VFR_TIME_BASE)
            if pts <= previous:
                raise ValueError(f"timestamps must strictly increase (frame {index})")
            frame.pts, frame.time_base, previous = pts, _VFR_TIME_BASE, pts
        yield frame


def _check_frame(array: np.ndarray, size: tuple[int, int] | None, index: int) -> tuple[int, int]:
    """(height, width) of an RGB uint8 frame, which must match `size` if given."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"frame {index}: expected uint8 (H, W, 3) RGB, got {array.dtype} {array.shape}"
        )
    if size is not None and array.shape[:2] != size:
        raise ValueError(f"frame {index}: size {array.shape[:2]} differs from the first {size}")
    return array.shape[0], array.shape[1]


# ---------------------------------------------------------------- motion dataset

# Per-frame motion speeds, drawn per video: translation in pixels, rotation in
# degrees, zoom as a change of log-scale. Large enough for optical flow to see
# at 10 fps, small enough to stay well under the default flow bound (20 px).
_TRANSLATE_PX = (1.0, 2.5)
_ROTATE_DEG = (1.5, 3.5)
_ZOOM_LOG = (0.012, 0.025)
# A zoom sweeps the log-scale over at most this range in one video, so long
# videos do not zoom into a blur or out into visible tiling.
_MAX_ZOOM_SWEEP = 1.2
_BASE_LOG_SCALE = 0.3  # every video's scale varies by up to e^±0.3 around 1
# Encoder settings: near-transparent quality so compression does not blur the motion.
_ENCODE_OPTIONS = {"crf": "18", "preset": "veryfast"}


def write_motion_dataset(
    root: str | Path,
    *,
    classes: int | Sequence[str] = 4,
    videos_per_class: int = 8,
    num_frames: int = 48,
    fps: float = 10.0,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
) -> list[Path]:
    """Write the motion-only dataset as ``root/<class>/<class>_<i>.mp4`` (`folders` layout).

    `classes` is a count (the first n of `MOTIONS`) or a list of motion names;
    `size` is (width, height). Each video is a fresh random smooth texture moving
    by its class's motion at a random speed from a fixed range, starting from a
    random position, angle and scale. Every class draws its textures, positions,
    angles and per-frame scales from the same distribution, so a single frame says
    nothing about the class; only the motion does. The same `seed` writes the same
    videos, and a class's videos do not depend on which other classes are chosen.

    Returns the written paths, class by class.
    """
    names = _class_names(classes)
    if videos_per_class < 1:
        raise VidrayError(f"videos_per_class must be >= 1, got {videos_per_class}")
    if num_frames < 2:
        raise VidrayError(f"num_frames must be >= 2 for a motion to exist, got {num_frames}")
    width, height = size
    if width < 2 or height < 2:
        raise VidrayError(f"size must be at least 2x2, got {width}x{height}")
    root = Path(root)
    paths = []
    for name in names:
        for i in range(videos_per_class):
            rng = np.random.default_rng([seed, MOTIONS.index(name), i])
            frames = _motion_frames(name, rng, num_frames=num_frames, width=width, height=height)
            path = root / name / f"{name}_{i:03d}.mp4"
            paths.append(write_video(path, frames, fps=fps, options=_ENCODE_OPTIONS))
    return paths


def _class_names(classes: int | Sequence[str]) -> list[str]:
    if isinstance(classes, int):
        if not 1 <= classes <= len(MOTIONS):
            raise VidrayError(f"classes must be 1..{len(MOTIONS)}, got {classes}")
        return list(MOTIONS[:classes])
    names = list(classes)
    unknown = [n for n in names if n not in MOTIONS]
    if unknown or not names or len(set(names)) != len(names):
        raise VidrayError(
            f"classes must be distinct names from {', '.join(MOTIONS)}; got {', '.join(names)}"
        )
    return names


def _motion_frames(
    name: str, rng: np.random.Generator, *, num_frames: int, width: int, height: int
) -> np.ndarray:
    """(num_frames, height, width, 3) uint8 frames of a random texture moving by `name`."""
    texture = _texture(rng, max(width, height))
    side = texture.shape[0]
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    # Where the texture starts: any point of the (periodic) texture, any angle.
    point = rng.uniform(0, side, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    # The log-scale of every frame follows one distribution for all classes: a
    # zoom sweeps it linearly around a base; other classes hold a value drawn as if
    # from a random frame of a random sweep.
    last = num_frames - 1
    zoom_rate = min(rng.uniform(*_ZOOM_LOG), _MAX_ZOOM_SWEEP / last)
    base = rng.uniform(-_BASE_LOG_SCALE, _BASE_LOG_SCALE)
    frame_times = np.arange(num_frames) - last / 2
    if name.startswith("zoom"):
        log_scale = base + (1 if name == "zoom_in" else -1) * zoom_rate * frame_times
    else:
        sign = rng.choice([-1, 1])
        log_scale = np.full(num_frames, base + sign * zoom_rate * rng.uniform(-last / 2, last / 2))
    # The motion: how the texture point at the screen centre and the angle change.
    direction = {
        "translate_left": (-1, 0),
        "translate_right": (1, 0),
        "translate_up": (0, -1),
        "translate_down": (0, 1),
    }
    speed = rng.uniform(*_TRANSLATE_PX)
    spin = math.radians(rng.uniform(*_ROTATE_DEG)) * {"rotate_cw": 1, "rotate_ccw": -1}.get(name, 0)

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        scale = math.exp(log_scale[t])
        theta = angle + spin * t
        # Texture point p lands on screen at rotation @ (p - point) + centre + shift:
        # `point` sits at the centre until the translation shifts everything.
        # With y pointing down, this matrix turns content clockwise for theta > 0.
        rotation = scale * np.array(
            [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        )
        shift = np.array(direction.get(name, (0, 0))) * speed * t
        matrix = np.hstack([rotation, (centre + shift - rotation @ point)[:, None]])
        frames[t] = cv2.warpAffine(
            texture,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_WRAP,  # the texture is periodic: motion never runs out
        )
    return frames


def _texture(rng: np.random.Generator, extent: int) -> np.ndarray:
    """A periodic, smooth, colourful RGB texture at least 2x `extent` on a side.

    Low-pass filtered noise (built in the Fourier domain, so it tiles seamlessly)
    plus a few soft coloured blobs: smooth enough for optical flow to be well
    defined, detailed enough that every motion shows.
    """
    side = 1 << max(6, math.ceil(math.log2(2 * extent)))
    sigma = extent / 32  # feature size in pixels, relative to the frame
    freq = np.fft.fftfreq(side)[:, None] ** 2 + np.fft.rfftfreq(side)[None, :] ** 2
    lowpass = np.exp(-2 * (math.pi * sigma) ** 2 * freq)
    noise = rng.standard_normal((3, side, side))
    smooth = np.fft.irfft2(np.fft.rfft2(noise) * lowpass, s=(side, side))
    smooth /= smooth.std(axis=(1, 2), keepdims=True)
    image = 128 + rng.uniform(30, 55, size=(3, 1, 1)) * smooth
    # Blobs use wrapped distances so they tile like the noise.
    coords = np.arange(side)
    for _ in range(rng.integers(3, 7)):
        cx, cy = rng.uniform(0, side, size=2)
        dx = np.minimum(abs(coords - cx), side - abs(coords - cx))
        dy = np.minimum(abs(coords - cy), side - abs(coords - cy))
        radius = rng.uniform(0.04, 0.1) * extent
        alpha = 0.9 * np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * radius**2))
        colour = rng.uniform(0, 255, size=(3, 1, 1))
        image = image * (1 - alpha) + colour * alpha
    return np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0))
