"""`render_prediction`: a prediction drawn over its video, frame by frame, at the video's
own rate and size: the labels of the window at each moment, a timeline bar in the
windows' class colours, a cursor at the frame's time."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from vidray.data.decode import iter_frames, probe
from vidray.data.synthetic import write_motion_dataset
from vidray.errors import VideoError, VidrayError
from vidray.predict.classifier import VideoPrediction
from vidray.predict.render import (
    Style,
    class_colour,
    render_prediction,
    text_block,
    window_at,
)

FPS = 10.0
SIZE = (160, 120)  # width, height
FRAMES = 40  # 4 s
CLASSES = ("left", "right", "up")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("render")
    paths = write_motion_dataset(
        root, classes=["translate_left"], videos_per_class=1, num_frames=FRAMES, size=SIZE
    )
    return paths[0]


def two_windows(video: Path) -> VideoPrediction:
    """0-2 s says left, 2-4 s says right (real probabilities, rows summing to 1)."""
    return VideoPrediction(
        video=str(video),
        classes=CLASSES,
        starts=np.array([0.0, 2.0]),
        ends=np.array([2.0, 4.0]),
        window_probs=np.array([[0.7, 0.2, 0.1], [0.15, 0.6, 0.25]]),
    )


@pytest.fixture(scope="module", params=[0, 60], ids=["source_size", "short_side_60"])
def drawn(request, source, tmp_path_factory) -> dict:
    """The rendered frames, their rate, and the source's frames at the same size."""
    output = tmp_path_factory.mktemp("drawn") / "drawn.mp4"
    assert (
        render_prediction(source, output, two_windows(source), short_side=request.param) == output
    )
    with av.open(str(output)) as container:
        rate = float(container.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    plain = list(iter_frames(source, fps=FPS, short_side=request.param))
    return {"short_side": request.param, "frames": frames, "rate": rate, "source": plain}


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: float = 35) -> bool:
    """The mean colour of ``pixels`` is within ``tolerance`` of ``colour`` per channel."""
    return bool(np.all(np.abs(pixels.reshape(-1, 3).mean(axis=0) - colour) < tolerance))


def test_the_drawn_video_has_the_sources_frames_rate_and_size(drawn, source):
    assert probe(source).fps == FPS
    size = (SIZE[1], SIZE[0]) if drawn["short_side"] == 0 else (60, 80)
    assert len(drawn["frames"]) == len(drawn["source"]) == FRAMES
    assert drawn["rate"] == pytest.approx(FPS)
    assert drawn["frames"][0].shape == drawn["source"][0].shape == (*size, 3)


def test_the_bar_under_each_window_has_its_top_class_colour(drawn):
    frame = drawn["frames"][0]  # the cursor sits at the left end
    height, width = frame.shape[:2]
    bar = Style.for_height(height).bar
    rows = slice(height - bar + 2, height - 2)  # clear of the frame above (chroma bleeds)
    under_first = frame[rows, width // 8 : 3 * width // 8]  # 0.5 .. 1.5 s
    under_second = frame[rows, 5 * width // 8 : 7 * width // 8]  # 2.5 .. 3.5 s
    assert near(under_first, class_colour(0)) and not near(under_first, class_colour(1))
    assert near(under_second, class_colour(1)) and not near(under_second, class_colour(0))


def test_the_label_box_shows_the_top_classes_of_the_window_at_that_moment(drawn):
    frames, source = drawn["frames"], drawn["source"]
    style = Style.for_height(frames[0].shape[0])
    lines = [(class_colour(i), f"{CLASSES[i]} 0.70") for i in range(3)]
    height, width = text_block(lines, style).shape[:2]  # the box's size, near enough
    box = np.s_[: height - 2, : width - 6]
    for index in (5, 15, 25, 35):
        assert difference(frames[index][box], source[index][box]) > 30
    # The same box while a window lasts, another one after it: the text changed.
    assert difference(frames[5][box], frames[15][box]) < 4
    assert difference(frames[15][box], frames[25][box]) > 4 * difference(
        frames[5][box], frames[15][box]
    )
    # The first line's swatch has the window's top class colour.
    swatch = np.s_[style.pad + 1 : style.pad + 4, style.pad + 1 : style.pad + 4]
    assert near(frames[15][swatch], class_colour(0), 45)
    assert near(frames[25][swatch], class_colour(1), 45)
    # Just below the box the frame is the video's own.
    below = np.s_[height + 2, :]
    assert difference(frames[20][below], source[20][below]) < 8


def test_the_cursor_moves_along_the_bar_with_time(drawn):
    frames = drawn["frames"]
    height, width = frames[0].shape[:2]
    bar = Style.for_height(height).bar
    found = []
    for index in (0, 10, 20, 30, 39):
        strip = frames[index][height - bar + 2 : height - 2].astype(int)
        white = np.flatnonzero(strip.min(axis=(0, 2)) > 200)
        assert white.size, index
        found.append(white.mean())
        assert white.mean() == pytest.approx(index / FPS / 4.0 * width, abs=2.5)
    assert found == sorted(found) and found[-1] - found[0] > width / 2


def test_the_window_at_a_moment_is_the_latest_started_covering_it_or_the_nearest():
    starts, ends = np.array([0.0, 0.8, 1.6]), np.array([1.6, 2.4, 3.2])  # overlapping
    assert [window_at(t, starts, ends) for t in (-1.0, 0.5, 1.0, 1.7, 2.5, 9.0)] == [
        0,
        0,
        1,
        2,
        2,
        2,
    ]
    starts, ends = np.array([0.0, 3.0]), np.array([1.0, 4.0])  # a gap from 1 s to 3 s
    assert [window_at(t, starts, ends) for t in (0.9, 1.8, 2.5, 3.5)] == [0, 0, 1, 1]


def test_an_output_that_is_not_mp4_is_a_one_line_error(source, tmp_path):
    output = tmp_path / "drawn.avi"
    with pytest.raises(VidrayError, match=r"drawn\.avi: name an \.mp4 file") as error:
        render_prediction(source, output, two_windows(source))
    assert "\n" not in str(error.value) and not output.exists()


def test_drawing_over_the_video_itself_is_a_one_line_error(source):
    before = source.read_bytes()
    with pytest.raises(VidrayError, match="that is the video itself") as error:
        render_prediction(
            source, source.parent / ".." / source.parent.name / source.name, two_windows(source)
        )
    assert "\n" not in str(error.value) and source.read_bytes() == before


def test_a_video_that_does_not_decode_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    output = tmp_path / "drawn.mp4"
    with pytest.raises(VideoError, match=r"broken\.mp4") as error:
        render_prediction(broken, output, two_windows(broken))
    assert "\n" not in str(error.value) and not output.exists()
