"""Decoding real PyAV-written files: probing, time-grid resampling, windows, hostile input."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media import (
    frame_index,
    make_audio_only,
    make_cut_after_header,
    make_mpegts,
    make_text_file,
    make_thumbnail_first,
    make_truncated,
    make_vfr_video,
    make_video,
    make_with_garbage,
    make_zero_byte,
    unicode_name,
)

from vidray.data import decode
from vidray.data.decode import (
    count_windows,
    grid_frame_count,
    iter_frames,
    iter_windows,
    output_size,
    probe,
)
from vidray.data.synthetic import write_video
from vidray.errors import VideoError


def indices(path: Path, **kwargs) -> list[int]:
    """The source frame index behind each frame `iter_frames` yields."""
    return [frame_index(f) for f in iter_frames(path, **{"fps": 10, "short_side": 0, **kwargs})]


# ------------------------------------------------------------------------ probe


def test_probe_reads_size_rate_duration_and_codec(tmp_path):
    info = probe(make_video(tmp_path / "a.mp4", num_frames=30, fps=10, size=(64, 48)))
    assert (info.width, info.height, info.num_frames, info.codec) == (64, 48, 30, "h264")
    assert info.duration == pytest.approx(3.0)
    assert info.fps == pytest.approx(10.0)


def test_probe_measures_a_stream_without_duration_metadata(tmp_path):
    path = make_mpegts(tmp_path / "broadcast.ts", num_frames=25, fps=10, start_sec=10.0)
    with av.open(str(path)) as container:  # the precondition: nothing to trust
        assert container.streams.video[0].frames == 0
    info = probe(path)
    assert info.num_frames == 25
    assert info.duration == pytest.approx(2.5)
    assert info.fps == pytest.approx(10.0)


def test_probe_measures_variable_frame_rate_from_timestamps(tmp_path):
    times = [0.0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.6]
    info = probe(make_vfr_video(tmp_path / "vfr.mkv", times))
    assert info.num_frames == 7
    # The last frame starts at 1.6 s; the stream ends when it stops being shown.
    assert 1.6 < info.duration < 2.5
    assert info.fps == pytest.approx(7 / info.duration)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: make_video(d / "a.mp4", num_frames=23),
        lambda d: make_video(d / "a.mkv", num_frames=23),
        lambda d: make_video(d / "a.webm", num_frames=23),
        lambda d: make_video(d / "a.avi", num_frames=23),
        lambda d: make_video(d / "a.mov", num_frames=23, codec="mjpeg"),
        lambda d: make_mpegts(d / "a.ts", num_frames=23, start_sec=3.3),
        lambda d: make_video(d / "hi.mp4", num_frames=60, fps=120),
        lambda d: make_video(d / "lo.mp4", num_frames=5, fps=2),
        lambda d: make_video(d / "odd.mkv", num_frames=9, fps=7),
        lambda d: make_vfr_video(d / "vfr.mp4", [0.0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.6]),
        lambda d: make_vfr_video(d / "vfr.mkv", [0.0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.6]),
    ],
    ids=[
        "mp4",
        "mkv",
        "webm",
        "avi",
        "mov-mjpeg",
        "ts",
        "120fps",
        "2fps",
        "7fps",
        "vfr-mp4",
        "vfr-mkv",
    ],
)
def test_probe_predicts_how_many_grid_frames_decode(tmp_path, make):
    path = make(tmp_path)
    info = probe(path)
    for fps in (10, 3.5):
        frames = list(iter_frames(path, fps=fps, short_side=0))
        assert len(frames) == grid_frame_count(info.duration, fps)


# ---------------------------------------------------------------- time grid


@pytest.mark.parametrize("source_fps", [60, 7])
def test_60fps_and_7fps_sources_share_the_time_base(tmp_path, source_fps):
    path = make_video(tmp_path / "v.mp4", num_frames=3 * source_fps, fps=source_fps)
    got = indices(path, fps=10)
    assert len(got) == 30  # 3 s at 10 fps whatever the source rate
    # Grid time k/10 shows the last source frame starting at or before it.
    assert got == [math.floor(k / 10 * source_fps + 1e-9) for k in range(30)]


@pytest.mark.parametrize(("suffix", "fps"), [(".mkv", 7), (".mkv", 30000 / 1001), (".mp4", 7)])
def test_a_source_sampled_at_its_own_rate_keeps_every_frame(tmp_path, suffix, fps):
    # Matroska stores times in whole milliseconds: frame i of a 7 fps source is
    # stamped up to 0.5 ms after i/7 and must still be the frame for grid time i/7.
    path = make_video(tmp_path / f"v{suffix}", num_frames=40, fps=fps)
    assert indices(path, fps=fps) == list(range(40))


def test_variable_frame_rate_is_resampled_by_timestamps(tmp_path):
    times = [0.0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.6]
    got = indices(make_vfr_video(tmp_path / "vfr.mp4", times))
    expected = [max(i for i, t in enumerate(times) if t <= k / 10 + 1e-9) for k in range(17)]
    assert got[:17] == expected
    assert set(got[17:]) == {6}


def test_a_stream_starting_at_a_late_timestamp_starts_at_time_zero(tmp_path):
    path = make_mpegts(tmp_path / "late.ts", num_frames=30, fps=10, start_sec=10.0)
    assert indices(path)[:3] == [0, 1, 2]
    assert indices(path, start_sec=1.0)[:3] == [10, 11, 12]


def test_start_and_end_sec_bound_the_grid(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=30, fps=10)
    # Grid times 0.95, 1.05, ..., 1.95: each shows the frame that started before it.
    assert indices(path, start_sec=0.95, end_sec=2.0) == list(range(9, 20))


def test_a_later_segment_is_decoded_without_reading_the_start(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=60, options={"g": "10"}, grain=4)
    # Destroy every packet before the last keyframe before 2 s: decoding from the
    # start must fail, a seek to 2 s must not.
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        keyframe = max(
            i for i, p in enumerate(packets) if p.is_keyframe and p.pts * stream.time_base <= 2
        )
    assert keyframe > 0
    noise = np.random.default_rng(0)
    for packet in packets[:keyframe]:
        data[packet.pos : packet.pos + packet.size] = noise.bytes(packet.size)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError):
        indices(path)
    assert indices(path, start_sec=2.0)[:5] == [20, 21, 22, 23, 24]


def test_short_side_resize_keeps_aspect_and_even_sizes(tmp_path):
    assert output_size(1920, 1080, 128) == (228, 128)
    assert output_size(1080, 1920, 128) == (128, 228)
    assert output_size(97, 61, 32) == (50, 32)
    assert output_size(97, 61, 33) == (50, 32)  # odd short side rounds down
    assert output_size(97, 61, 0) == (96, 60)
    assert output_size(3, 1, 0) == (2, 2)
    frame = next(
        iter_frames(make_video(tmp_path / "odd.mp4", size=(97, 61)), fps=10, short_side=32)
    )
    assert frame.shape == (32, 50, 3)
    assert frame_index(frame) == 0


def test_frames_are_uint8_rgb(tmp_path):
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 220
    frame = next(
        iter_frames(write_video(tmp_path / "red.mp4", [red] * 3, fps=10), fps=10, short_side=0)
    )
    assert frame.dtype == np.uint8
    assert frame.shape == (48, 64, 3)
    np.testing.assert_allclose(frame.mean(axis=(0, 1)), [220, 0, 0], atol=6)


def test_a_repeated_source_frame_is_one_read_only_array(tmp_path):
    frames = list(
        iter_frames(make_video(tmp_path / "slow.mp4", num_frames=3, fps=2), fps=10, short_side=0)
    )
    assert frames[0] is frames[4]
    assert frames[4] is not frames[5]
    assert not frames[0].flags.writeable


def test_a_small_source_is_enlarged_at_most_max_upscale_times():
    assert output_size(480, 32, 128) == (1920, 128)  # no limit: 16x the pixels
    assert output_size(480, 32, 128, max_upscale=2) == (960, 64)
    assert output_size(32, 480, 128, max_upscale=1.5) == (48, 720)
    assert output_size(480, 32, 128, max_upscale=1) == (480, 32)  # never enlarged
    assert output_size(1920, 1080, 128, max_upscale=1) == (228, 128)  # shrinking is not capped
    assert output_size(18, 10, 32, max_upscale=2) == (36, 20)
    with pytest.raises(ValueError, match="max_upscale must be 0"):
        output_size(64, 48, 32, max_upscale=0.5)


def test_decoding_with_max_upscale_stores_a_tiny_source_at_twice_its_size(tmp_path):
    path = make_video(tmp_path / "strip.mp4", num_frames=3, size=(240, 16))
    frames = list(iter_frames(path, fps=10, short_side=128, max_upscale=2))
    assert frames[0].shape == (32, 480, 3)
    assert [frame_index(f) for f in frames] == [0, 1, 2]


@pytest.mark.parametrize("size", [(18, 10), (97, 61)], ids=["tiny", "odd"])
def test_tiny_and_odd_sizes_decode_to_even_sizes(tmp_path, size):
    path = make_video(tmp_path / "v.mp4", num_frames=12, size=size)
    info = probe(path)
    assert (info.width, info.height) == size
    frames = list(iter_frames(path, fps=10, short_side=0))
    assert frames[0].shape == (size[1] - size[1] % 2, size[0] - size[0] % 2, 3)
    assert [frame_index(f) for f in frames] == list(range(12))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_rotated_phone_video_is_decoded_upright(tmp_path, rotation):
    """Frames stored landscape with a display rotation come out as players show them
    (checked once against ffmpeg's autorotate: identical pixels)."""
    path = make_video(tmp_path / "phone.mp4", num_frames=6, size=(64, 48), rotation=rotation)
    info = probe(path)
    assert (info.width, info.height) == ((48, 64) if rotation % 180 else (64, 48))
    frames = list(iter_frames(path, fps=10, short_side=32))
    assert frames[0].shape == ((42, 32, 3) if rotation % 180 else (32, 42, 3))
    # Turned back by the rotation, each frame reads its own index; a turn the wrong
    # way round would read the index's digits reversed.
    stored = [np.rot90(f, -rotation // 90) for f in frames]
    assert [frame_index(f) for f in stored] == list(range(6))


def test_anamorphic_pixels_are_stretched_to_square_ones(tmp_path):
    """HDV-style video: 64x48 stored pixels that are 4/3 as wide as tall show as 85x48."""
    path = make_video(tmp_path / "hdv.mp4", num_frames=6, sample_aspect_ratio=Fraction(4, 3))
    info = probe(path)
    assert (info.width, info.height) == (85, 48)
    frames = list(iter_frames(path, fps=10, short_side=32))
    assert frames[0].shape == (32, 56, 3)
    assert [frame_index(f) for f in frames] == list(range(6))


def test_decoder_threads_do_not_change_the_frames(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=20, grain=4)
    one = list(iter_frames(path, fps=10, short_side=0, threads=1))
    auto = list(iter_frames(path, fps=10, short_side=0, threads=0))
    assert all(np.array_equal(a, b) for a, b in zip(one, auto, strict=True))


def test_a_file_name_with_spaces_and_non_ascii_characters_decodes(tmp_path):
    path = make_video(unicode_name(tmp_path), num_frames=5)
    assert probe(path).num_frames == 5
    assert indices(path) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------- windows


def test_windows_cover_the_grid_with_the_given_stride(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=30, fps=10)
    windows = list(iter_windows(path, fps=10, short_side=0, window_frames=8, window_stride=5))
    assert [w.index for w in windows] == [0, 1, 2, 3, 4]
    assert [frame_index(w.frames[0]) for w in windows] == [0, 5, 10, 15, 20]
    assert [w.start_sec for w in windows] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert windows[0].frames.shape == (8, 48, 64, 3)
    assert [frame_index(f) for f in windows[-1].frames] == list(range(20, 28))
    assert all(w.padded == 0 for w in windows)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: make_video(d / "v.mp4", num_frames=75, fps=25, options={"g": "12"}),
        lambda d: make_video(d / "v.mkv", num_frames=75, fps=25, options={"g": "12"}),
        lambda d: make_mpegts(d / "v.ts", num_frames=75, fps=25, start_sec=5.0),
    ],
    ids=["mp4", "mkv", "ts"],
)
def test_segment_windows_equal_the_same_windows_from_a_full_decode(tmp_path, make):
    path = make(tmp_path)
    args = dict(fps=10, short_side=0, window_frames=6, window_stride=4, start_sec=0.3)
    full = list(iter_windows(path, **args))
    segments = [
        w
        for first in range(0, 8, 3)
        for w in iter_windows(path, first_window=first, max_windows=3, **args)
    ]
    assert len(full) == len(segments) == count_windows(27, window_frames=6, window_stride=4) == 6
    for a, b in zip(full, segments, strict=True):
        assert (a.index, a.start_sec, a.padded) == (b.index, b.start_sec, b.padded)
        np.testing.assert_array_equal(a.frames, b.frames)
    assert segments[3].start_sec == pytest.approx(0.3 + 3 * 4 / 10)  # absolute time in the file


def test_a_segment_past_the_end_yields_nothing(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=20)
    assert (
        list(
            iter_windows(
                path, fps=10, short_side=0, window_frames=4, window_stride=4, first_window=9
            )
        )
        == []
    )


@pytest.mark.parametrize("num_frames", [1, 2, 5, 8, 9, 13, 20])
def test_count_windows_predicts_iter_windows(tmp_path, num_frames):
    path = make_video(tmp_path / "v.mp4", num_frames=num_frames, fps=10)
    grid = grid_frame_count(probe(path).duration, 10)
    expected = count_windows(grid, window_frames=8, window_stride=4)
    try:
        got = len(list(iter_windows(path, fps=10, short_side=0, window_frames=8, window_stride=4)))
    except VideoError:
        got = 0
    assert got == expected


def test_count_windows_cases():
    assert count_windows(32, window_frames=32, window_stride=16) == 1
    assert count_windows(47, window_frames=32, window_stride=16) == 1
    assert count_windows(48, window_frames=32, window_stride=16) == 2
    assert count_windows(5, window_frames=32, window_stride=16) == 1  # padded
    assert count_windows(1, window_frames=32, window_stride=16) == 0
    assert grid_frame_count(4.8, 10) == 48
    assert grid_frame_count(48 / 7, 10) == 69
    assert grid_frame_count(4.8, 10, start_sec=1.0, end_sec=2.0) == 10


def test_video_shorter_than_window_is_padded_with_last_frame(tmp_path):
    path = make_video(tmp_path / "short.mp4", num_frames=5, fps=10)
    (window,) = iter_windows(path, fps=10, short_side=0, window_frames=8, window_stride=8)
    assert window.padded == 3
    assert window.frames.shape[0] == 8
    assert [frame_index(f) for f in window.frames] == [0, 1, 2, 3, 4, 4, 4, 4]


def test_a_thumbnail_stream_before_the_video_is_not_what_is_read(tmp_path):
    path = make_thumbnail_first(tmp_path / "thumb.mkv", num_frames=20)
    info = probe(path)
    assert (info.codec, info.num_frames, info.width) == ("h264", 20, 64)
    assert indices(path) == list(range(20))


def test_single_frame_video_is_too_short_for_a_window(tmp_path):
    path = make_video(tmp_path / "one.mp4", num_frames=1)
    assert probe(path).num_frames == 1
    with pytest.raises(VideoError, match="fewer than 2 decodable frames"):
        list(iter_windows(path, fps=10, short_side=0, window_frames=4, window_stride=4))


# ---------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.mp4", "not found"),
        (lambda d: make_zero_byte(d / "empty.mp4"), "empty"),
        (lambda d: make_text_file(d / "notes.txt"), "not a video"),
        (lambda d: make_text_file(d / "notes.mp4"), "not a recognised video"),
        (lambda d: make_audio_only(d / "song.m4a"), "no video stream"),
        (lambda d: make_audio_only(d / "song.mp4", cover=True), "only a cover picture"),
        (
            lambda d: make_truncated(d / "cut.mp4", num_frames=20, faststart=False),
            r"truncated or incomplete MP4/MOV: it ends inside its 'mdat' box \(\d+ of \d+ "
            r"bytes\) and has no 'moov' index",
        ),
        (
            lambda d: make_cut_after_header(d / "header.mp4", num_frames=20),
            r"truncated MP4/MOV: it ends after \d+ bytes, before its video data",
        ),
        (lambda d: d, "not a regular file"),
        (lambda d: d / f"{'x' * 300}.mp4", r"cannot read it \(File name too long\)"),
    ],
    ids=[
        "missing",
        "zero-byte",
        "text-txt",
        "text-mp4",
        "audio-only",
        "audio-with-cover-art",
        "cut-no-index",
        "cut-after-header",
        "directory",
        "name-too-long",
    ],
)
def test_unreadable_input_is_a_video_error_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    for attempt in (lambda: probe(path), lambda: list(iter_frames(path, fps=10, short_side=0))):
        with pytest.raises(VideoError, match=reason) as caught:
            attempt()
        message = str(caught.value)
        assert str(path) in message and "\n" not in message


def test_a_file_unreadable_after_ffmpeg_refused_it_is_a_video_error(tmp_path, monkeypatch):
    """FFmpeg refuses a file, then the MP4 check cannot read it either (chmod 000, or
    deleted meanwhile): still the one VideoError, never an OSError."""
    assert decode._mp4_cut(tmp_path / "deleted.mp4") is None
    assert decode._mp4_cut(tmp_path) is None  # a folder: open() fails
    path = make_text_file(tmp_path / "notes.mp4")

    def unreadable(path: Path):  # what chmod 000 does, for a test that runs as root
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(decode, "_top_boxes", unreadable)
    with pytest.raises(VideoError, match=r"notes.mp4: not a recognised video format"):
        probe(path)


def test_a_header_over_an_undecodable_stream_fails_probe(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=10, faststart=True)
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    for packet in packets:
        data[packet.pos : packet.pos + packet.size] = np.random.default_rng(1).bytes(packet.size)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError, match="no decodable video frame"):
        probe(path)


def test_truncated_file_yields_frames_before_the_cut(tmp_path):
    path = make_truncated(tmp_path / "cut.mp4", num_frames=40, fraction=0.5)
    info = probe(path)
    assert 10 <= info.num_frames < 40  # the header says 40; probe counts what is there
    errors: list[str] = []
    got = indices(path, errors=errors)
    assert got == list(range(info.num_frames))
    assert len(errors) == 1 and errors[0].startswith("decode stopped at")
    with pytest.raises(VideoError, match="decode stopped at"):
        indices(path)


@pytest.mark.parametrize("suffix", [".mkv", ".ts", ".webm"])
def test_truncated_streaming_containers_keep_the_frames_before_the_cut(tmp_path, suffix):
    path = make_truncated(tmp_path / f"cut{suffix}", num_frames=40, fraction=0.5)
    got = indices(path, errors=[])
    assert 10 <= len(got) < 40
    assert got == sorted(got) and got[0] == 0 and len(set(got)) >= len(got) - 2
    assert len(got) == grid_frame_count(probe(path).duration, 10)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_garbage_appended_to_a_valid_file_is_ignored(tmp_path, suffix):
    path = make_with_garbage(tmp_path / f"g{suffix}", num_frames=30)
    errors: list[str] = []
    assert indices(path, errors=errors) == list(range(30))
    assert probe(path).num_frames == 30
