"""Draw a video's prediction over it: the top classes of each moment and a timeline bar.

The video is drawn at its own frame rate and size (or a short side the user picks),
not at the small stored size the model saw, so the labels are legible:

    source video -> frames at its own fps and size (`iter_frames`)   one frame held
      -> the top-3 labels and scores of the window at that moment     box, top left
      -> the timeline bar: a segment per window in its top class's
         colour, a cursor at the frame's time, the video's top-1
         label and score above the bar's right end                    bottom rows
      -> .mp4 (`write_video`)

The window at a moment is the one covering it; where windows overlap (a stride
shorter than a window) the latest one that started, as it has seen most of what
comes next; where none covers it (before the first, after the last, or between
windows spaced wider than they last) the nearest. The bar's segments follow the
same rule, so the labels always name the colour under the cursor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vidray.data.decode import iter_frames, probe
from vidray.data.synthetic import write_video
from vidray.errors import VidrayError
from vidray.predict.classifier import VideoPrediction

TOP_LABELS = 3
# One colour per class index (cycled past 10): matplotlib's tab10, distinct for most
# colour-blind viewers, none of them white or black (the cursor's colours).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
BOX_COLOUR = (24, 24, 24)
TEXT_COLOUR = (245, 245, 245)
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Below this many pixels per window the bar shows no segment edges (a long video's
# hundreds of windows would turn it dark); same-class neighbours then merge.
MIN_SEGMENT_PX = 8

Colour = tuple[int, int, int]


def class_colour(index: int) -> Colour:
    """The colour of class ``index`` on the timeline bar and beside its labels."""
    return PALETTE[index % len(PALETTE)]


def render_prediction(
    video: Path, output: Path, prediction: VideoPrediction, *, short_side: int = 0
) -> Path:
    """Write ``video`` to ``output`` (.mp4) with ``prediction`` drawn on every frame, at
    the video's frame rate and size (``short_side`` > 0: resized to it)."""
    video, output = Path(video), Path(output)
    check_output(video, output, short_side=short_side)
    if not len(prediction.starts):
        raise VidrayError(f"{prediction.video}: a prediction without windows has nothing to draw")
    info = probe(video)
    frames = iter_frames(video, fps=info.fps, short_side=short_side)
    first = next(frames)
    height, width = first.shape[:2]
    duration = max(info.duration, float(prediction.ends.max()))
    overlay = Overlay(prediction, width=width, height=height, duration=duration)
    drawn = (
        overlay.draw(frame, index / info.fps)
        for index, frame in enumerate(itertools.chain([first], frames))
    )
    return write_video(output, drawn, fps=info.fps)


def check_output(video: Path, output: Path, *, short_side: int = 0) -> None:
    """A one-line error for an output `render_prediction` cannot write: callers check
    before the model runs, so a typo costs no prediction."""
    if Path(output).suffix.lower() != ".mp4":
        raise VidrayError(f"{output}: name an .mp4 file to draw the prediction on")
    if Path(output).resolve() == Path(video).resolve():
        raise VidrayError(f"{output}: that is the video itself; name another .mp4 to write")
    if short_side < 0:
        raise VidrayError(f"short_side={short_side}: 0 (the video's size) or more pixels")


def window_at(t: float, starts: np.ndarray, ends: np.ndarray) -> int:
    """The index of the window shown at ``t`` seconds (the rule in the module's doc)."""
    covering = np.flatnonzero((starts <= t) & (t < ends))
    if covering.size:
        return int(covering[np.argmax(starts[covering])])
    return int(np.argmin(np.maximum(starts - t, t - ends)))


@dataclass(frozen=True)
class Style:
    """Sizes in pixels for a frame height: legible on a 64-pixel frame, in proportion
    on a big one. The cursor is at least 2 pixels wide (a 1-pixel line fades in the
    encoder's 4:2:0 chroma); a segment boundary may be 1 pixel, as it only darkens
    (brightness is kept at full resolution)."""

    scale: float  # of the font
    thickness: int  # of the text strokes
    pad: int  # around and between the text lines
    bar: int  # the timeline bar's height
    cursor: int  # the cursor's width, inside a 1-pixel black edge each side
    edge: int  # a segment boundary's width

    @classmethod
    def for_height(cls, height: int) -> Style:
        scale = max(0.3, height / 480)
        return cls(
            scale=scale,
            thickness=max(1, round(scale)),
            pad=max(1, round(3 * scale)),
            bar=max(6, round(height / 16)),
            cursor=max(2, round(height / 180)),
            edge=max(1, round(height / 240)),
        )


class Overlay:
    """What is drawn on the frames of one video, laid out once for their size: the bar
    and the video's top-1 are the same on every frame; a window's label box is drawn
    once and kept while its window is shown."""

    def __init__(
        self, prediction: VideoPrediction, *, width: int, height: int, duration: float
    ) -> None:
        self.prediction = prediction
        self.width, self.height, self.duration = width, height, duration
        self.style = Style.for_height(height)
        self.bar = self._bar()
        label, score = prediction.top(1)[0]
        colour = class_colour(prediction.classes.index(label))
        self.summary = text_block([(colour, f"video: {label} {score:.2f}")], self.style)
        self._shown: tuple[int, np.ndarray | None] = (-1, None)

    def draw(self, frame: np.ndarray, t: float) -> np.ndarray:
        """A copy of ``frame`` (H, W, 3 RGB) with the prediction at ``t`` seconds."""
        canvas = frame.copy()
        top = self.height - self.style.bar
        canvas[top:] = self.bar
        x = max(0, self.width - self.summary.shape[1])
        paste(canvas, self.summary, x, max(0, top - self.summary.shape[0]))
        paste(
            canvas, self._labels(window_at(t, self.prediction.starts, self.prediction.ends)), 0, 0
        )
        self._cursor(canvas, t)
        return canvas

    def cursor_x(self, t: float) -> int:
        """The bar's column at ``t`` seconds."""
        return min(self.width - 1, max(0, round(t / self.duration * self.width)))

    def _labels(self, window: int) -> np.ndarray:
        if self._shown[0] != window:
            probs = self.prediction.window_probs[window]
            order = np.argsort(-probs, kind="stable")[:TOP_LABELS]  # as VideoPrediction.top
            lines = [
                (class_colour(i), f"{self.prediction.classes[i]} {probs[i]:.2f}") for i in order
            ]
            self._shown = (window, text_block(lines, self.style))
        return self._shown[1]

    def _bar(self) -> np.ndarray:
        """(bar, width, 3): each column in the top class's colour of the window at its time."""
        prediction = self.prediction
        times = (np.arange(self.width) + 0.5) / self.width * self.duration
        owners = np.array([window_at(t, prediction.starts, prediction.ends) for t in times])
        top_class = prediction.window_probs.argmax(axis=1)
        colours = np.array(PALETTE, np.uint8)[top_class[owners] % len(PALETTE)]
        strip = np.repeat(colours[None], self.style.bar, axis=0)
        if self.width >= MIN_SEGMENT_PX * len(prediction.starts):
            for x in np.flatnonzero(np.diff(owners)) + 1:  # a segment's first column
                strip[:, x : x + self.style.edge] //= 2
        return strip

    def _cursor(self, canvas: np.ndarray, t: float) -> None:
        """A white line with black edges: it shows on every class colour."""
        x, half = self.cursor_x(t), self.style.cursor // 2
        rows = slice(self.height - self.style.bar, self.height)
        canvas[rows, max(0, x - half - 1) : x - half + self.style.cursor + 1] = 0
        canvas[rows, max(0, x - half) : x - half + self.style.cursor] = 255


def text_block(lines: Sequence[tuple[Colour, str]], style: Style) -> np.ndarray:
    """An image of ``lines``, one a row, each after a swatch of its colour, in light text
    on a dark filled box, so it reads on any video."""
    (_, text_h), base = cv2.getTextSize("Ag", FONT, style.scale, style.thickness)
    pad, row = style.pad, text_h + base + style.pad
    widths = [cv2.getTextSize(text, FONT, style.scale, style.thickness)[0][0] for _, text in lines]
    block = np.full(
        (pad + row * len(lines), 3 * pad + text_h + max(widths), 3), BOX_COLOUR, np.uint8
    )
    for n, (colour, text) in enumerate(lines):
        top = pad + n * row
        cv2.rectangle(block, (pad, top), (pad + text_h - 1, top + text_h - 1), colour, cv2.FILLED)
        origin = (2 * pad + text_h, top + text_h)
        cv2.putText(
            block, text, origin, FONT, style.scale, TEXT_COLOUR, style.thickness, cv2.LINE_AA
        )
    return block


def paste(canvas: np.ndarray, block: np.ndarray, x: int, y: int) -> None:
    """Copy ``block`` onto ``canvas`` with its top-left corner at (x, y), cut at the edges."""
    height = min(block.shape[0], canvas.shape[0] - y)
    width = min(block.shape[1], canvas.shape[1] - x)
    canvas[y : y + height, x : x + width] = block[:height, :width]
