import numpy as np
import pyarrow as pa
import pytest
from windows import W, clip_views, coded_window

from vidray.config import ClipConfig
from vidray.data.clips import ClipSampler, hflip, spatial_offsets, temporal_offsets
from vidray.data.shards import decode_images, encode_images
from vidray.errors import VidrayError

H, WIDTH = 20, 30


def _window(codec="raw", with_flow=True):
    """Frame i is filled with 10*i; flow field j has x = 100 + j, y = 50 + j (quantized)."""
    frames = np.stack([np.full((H, WIDTH, 3), 10 * i, np.uint8) for i in range(W)])
    flow = np.zeros((W - 1, H, WIDTH, 2), np.uint8)
    for j in range(W - 1):
        flow[j, ..., 0] = 100 + j
        flow[j, ..., 1] = 50 + j
    return {
        "video_key": 7,
        "label": 2,
        "height": H,
        "width": WIDTH,
        "frames_codec": codec,
        "frames": encode_images(frames, codec=codec),
        "flow_codec": "raw",
        "flow": encode_images(flow, codec="raw") if with_flow else None,
    }


def _indices(frames):
    return (frames[:, H // 2, WIDTH // 2, 1].astype(int) // 10).tolist()


def test_eval_clip_is_centred_with_the_requested_stride():
    sampler = ClipSampler(ClipConfig(T=4, stride=3, crop=16), flow_L=0, train=False)
    frames, flow = sampler.sample(_window(), None)
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8
    span = 3 * 3 + 1
    start = (W - span) // 2
    assert _indices(frames) == [start + 3 * i for i in range(4)]
    assert flow is None


def test_eval_is_deterministic():
    sampler = ClipSampler(ClipConfig(T=4, stride=2, crop=16), flow_L=3, train=False)
    table = pa.Table.from_pylist([_window(), _window()])
    a, b = sampler(table), sampler(table)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["flow"], b["flow"])


def test_train_offsets_vary_and_stay_inside_the_window():
    sampler = ClipSampler(ClipConfig(T=4, stride=2, crop=16, hflip=False), flow_L=0, train=True)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(60):
        frames, _ = sampler.sample(_window(), rng)
        idx = _indices(frames)
        assert idx == [idx[0] + 2 * i for i in range(4)] and idx[-1] < W
        starts.add(idx[0])
    assert starts == set(range(W - 7 + 1))


def test_flow_stack_is_centred_on_the_clip():
    sampler = ClipSampler(ClipConfig(T=4, stride=2, crop=16), flow_L=4, train=False)
    frames, flow = sampler.sample(_window(), None)
    assert flow.shape == (4, 16, 16, 2)
    start = _indices(frames)[0]
    middle = start + 7 // 2
    assert (flow[:, 0, 0, 0] - 100).tolist() == list(range(middle - 2, middle + 2))


def test_flip_negates_flow_x():
    """Each training clip is either as stored, or mirrored with its own flow mirrored and
    its x negated (255 - q: quantization is symmetric about 127.5), y kept."""
    T, stride, crop, L = 3, 2, 16, 2
    sampler = ClipSampler(
        ClipConfig(T=T, stride=stride, crop=crop, hflip=True), flow_L=L, train=True
    )
    row = coded_window(20, 30)
    stored = np.stack([np.frombuffer(f, np.uint8).reshape(20, 30, 3) for f in row["frames"]])
    stored_flow = np.stack([np.frombuffer(f, np.uint8).reshape(20, 30, 2) for f in row["flow"]])
    batch = sampler(pa.Table.from_pylist([row] * 64), np.random.default_rng(0))
    flipped = 0
    for frames, flow in zip(batch["frames"], batch["flow"], strict=True):
        # where the clip was cut: frame, row and column codes are the same either way
        start, top, left = int(frames[0, 0, 0, 1]) // 10, frames[..., 2].min(), frames[..., 0].min()
        plain = stored[start : start + T * stride : stride, top : top + crop, left : left + crop]
        plain_flow = stored_flow[:L, top : top + crop, left : left + crop]  # all fields alike
        if np.array_equal(frames, plain):
            np.testing.assert_array_equal(flow, plain_flow)
        else:
            np.testing.assert_array_equal(frames, plain[:, :, ::-1])
            mirrored = plain_flow[:, :, ::-1]
            np.testing.assert_array_equal(flow[..., 0], 255 - mirrored[..., 0])
            np.testing.assert_array_equal(flow[..., 1], mirrored[..., 1])
            flipped += 1
    assert 0 < flipped < len(batch["frames"])


def test_jpeg_frames_give_the_same_clip_indices():
    sampler = ClipSampler(ClipConfig(T=4, stride=3, crop=16), flow_L=0, train=False)
    raw, _ = sampler.sample(_window("raw"), None)
    jpeg, _ = sampler.sample(_window("jpeg"), None)
    assert np.abs(raw.astype(int) - jpeg.astype(int))[:, 4:12, 4:12].max() <= 3


def test_clip_longer_than_the_window_is_a_clear_error():
    sampler = ClipSampler(ClipConfig(T=8, stride=3, crop=16), flow_L=0, train=False)
    with pytest.raises(VidrayError, match=r"spans 22 frames, but windows hold 16"):
        sampler.sample(_window(), None)


def test_a_window_stored_smaller_than_the_crop_is_enlarged_with_its_flow():
    """A tiny source is stored at most ingest.max_upscale times enlarged: 20x30 windows
    read with a 40-pixel crop are enlarged 2x, and their flow (pixels) doubles too."""
    sampler = ClipSampler(ClipConfig(T=2, stride=1, crop=40, hflip=False), flow_L=2, train=False)
    frames, flow = sampler.sample(_window(), None)
    assert frames.shape == (2, 40, 40, 3) and flow.shape == (2, 40, 40, 2)
    assert _indices(frames) == [7, 8]  # the centred clip, as at the stored size
    # The fields around the clip's middle, 7 and 8, store x = 100 + j, y = 50 + j about
    # the zero level 127.5; enlarged 2x, each moves twice as far from it (y = 57 and 58
    # then pass -bound and stay at it, 0).
    for j, field in zip((7, 8), flow, strict=True):
        for axis, stored in ((0, 100 + j), (1, 50 + j)):
            expected = min(max(127.5 + 2 * (stored - 127.5), 0), 255)
            assert np.abs(field[..., axis] - expected).max() <= 0.5
    train = ClipSampler(ClipConfig(T=2, stride=1, crop=40), flow_L=2, train=True)
    assert train.sample(_window(), np.random.default_rng(0))[0].shape == (2, 40, 40, 3)


def test_flow_model_on_data_without_flow_is_a_clear_error():
    sampler = ClipSampler(ClipConfig(T=2, stride=1, crop=16), flow_L=2, train=False)
    with pytest.raises(VidrayError, match=r"flow.backend=none"):
        sampler.sample(_window(with_flow=False), None)


def test_multi_view_takes_temporal_times_spatial_clips_per_window():
    sampler = ClipSampler(
        ClipConfig(T=4, stride=2, crop=16), flow_L=2, train=False, temporal_views=2, spatial_views=3
    )
    batch = sampler(pa.Table.from_pylist([coded_window(20, 30), coded_window(20, 30)]))
    assert batch["frames"].shape == (12, 4, 16, 16, 3)
    assert batch["flow"].shape == (12, 2, 16, 16, 2)
    assert batch["label"].tolist() == [2] * 12 and batch["video_key"].tolist() == [7] * 12
    # span 7 in 16 frames: offsets 0 and 9; landscape: crops left, centre, right, centred vertically
    one_window = [(s, 2, left) for s in (0, 9) for left in (0, 7, 14)]
    assert clip_views(batch["frames"]) == one_window * 2
    assert "video_id" not in batch


def test_portrait_frames_are_cropped_top_centre_bottom():
    sampler = ClipSampler(
        ClipConfig(T=4, stride=2, crop=16), flow_L=0, train=False, spatial_views=3
    )
    batch = sampler(pa.Table.from_pylist([coded_window(30, 20)]))
    assert clip_views(batch["frames"]) == [(4, 0, 2), (4, 7, 2), (4, 14, 2)]


def test_temporal_views_are_evenly_spaced_over_the_window():
    sampler = ClipSampler(
        ClipConfig(T=2, stride=1, crop=16), flow_L=0, train=False, temporal_views=4
    )
    batch = sampler(pa.Table.from_pylist([coded_window(20, 30)]))
    assert [s for s, _, _ in clip_views(batch["frames"])] == [0, 5, 9, 14]  # round(i * 14 / 3)


def test_a_single_view_is_the_centred_clip():
    sampler = ClipSampler(ClipConfig(T=4, stride=3, crop=16), flow_L=0, train=False)
    row = coded_window(20, 30)
    ((frames, _),) = sampler.views(row)
    np.testing.assert_array_equal(frames, sampler.sample(row, None)[0])


def test_video_ids_are_read_only_when_asked():
    clip = ClipConfig(T=2, stride=1, crop=16)
    assert "video_id" not in ClipSampler(clip, flow_L=0, train=True).columns
    sampler = ClipSampler(clip, flow_L=0, train=False, spatial_views=3, video_ids=True)
    assert "video_id" in sampler.columns
    batch = sampler(
        pa.Table.from_pylist([coded_window(20, 30, "x/1"), coded_window(20, 30, "y/2")])
    )
    assert batch["video_id"].tolist() == ["x/1"] * 3 + ["y/2"] * 3


@pytest.mark.parametrize(
    ("views", "message"),
    [
        ({"spatial_views": 2}, r"^eval.spatial_views=2: must be 1 \(centre crop\) or 3"),
        ({"temporal_views": 0}, r"^eval.temporal_views=0: needs at least 1 clip per window$"),
        ({"train": True, "temporal_views": 2}, r"for evaluation only"),
    ],
)
def test_undefined_view_counts_are_one_line_errors(views, message):
    kwargs = {"train": False, **views}
    with pytest.raises(VidrayError, match=message) as info:
        ClipSampler(ClipConfig(T=2, stride=1, crop=16), flow_L=0, **kwargs)
    assert "\n" not in str(info.value)


def test_a_flipped_keyframe_box_still_holds_its_person():
    """`hflip` mirrors normalised boxes with the frames: the pixels a box covers are the
    same before and after (the flip detection training uses)."""
    frames = np.zeros((2, 40, 100, 3), np.uint8)
    box = np.array([[0.1, 0.25, 0.3, 0.75]], np.float32)  # x1, y1, x2, y2
    frames[:, 10:30, 10:30] = 255
    flipped, moved = hflip(frames, box)
    x1, y1, x2, y2 = (moved[0] * [100, 40, 100, 40]).round().astype(int)
    assert (x1, x2) == (70, 90) and (y1, y2) == (10, 30)
    assert (flipped[:, y1:y2, x1:x2] == 255).all() and flipped.sum() == frames.sum()


def test_a_batch_copies_only_the_entries_its_clips_pick():
    """The stored frames and flow stay in Arrow's buffers: no Python copy of every entry
    (a window holds W frames, a clip uses T), and clips are cut straight into the batch."""
    import tracemalloc

    height, width = 96, 128
    row = dict(coded_window(height, width), frames_codec="raw")
    table = pa.Table.from_pylist([row] * 8)
    sampler = ClipSampler(ClipConfig(T=2, stride=1, crop=64), flow_L=2, train=True)
    sampler(table, np.random.default_rng(0))  # imports and caches warm
    tracemalloc.start()
    batch = sampler(table, np.random.default_rng(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    kept = batch["frames"].nbytes + batch["flow"].nbytes
    stored_row = W * height * width * 3 + (W - 1) * height * width * 2
    assert peak < kept + stored_row // 4, (peak, kept, stored_row)


def test_multi_view_jpeg_clips_equal_decode_then_crop():
    """JPEG frames and side-by-side JPEG flow, several crops of each decoded entry: the
    pixels of decoding whole entries, then cropping."""
    row = coded_window(24, 40)
    stored = np.stack([np.frombuffer(f, np.uint8).reshape(24, 40, 3) for f in row["frames"]])
    flow = np.stack([np.frombuffer(f, np.uint8).reshape(24, 40, 2) for f in row["flow"]])
    row.update(
        frames_codec="jpeg",
        frames=encode_images(stored, codec="jpeg"),
        flow_codec="jpeg",
        flow=encode_images(flow, codec="jpeg"),
    )
    T, stride, crop, L = 4, 2, 16, 3
    sampler = ClipSampler(
        ClipConfig(T=T, stride=stride, crop=crop),
        flow_L=L,
        train=False,
        temporal_views=2,
        spatial_views=3,
    )
    batch = sampler(pa.Table.from_pylist([row]))
    whole = decode_images(row["frames"], codec="jpeg", height=24, width=40, channels=3)
    whole_flow = decode_images(row["flow"], codec="jpeg", height=24, width=40, channels=2)
    span = (T - 1) * stride + 1
    views = [
        (start, top, left)
        for start in temporal_offsets(W, span, 2)
        for top, left in spatial_offsets(24, 40, crop, 3)
    ]
    for frames, clip_flow, (start, top, left) in zip(
        batch["frames"], batch["flow"], views, strict=True
    ):
        first = start + span // 2 - L // 2
        np.testing.assert_array_equal(
            frames, whole[start : start + span : stride, top : top + crop, left : left + crop]
        )
        np.testing.assert_array_equal(
            clip_flow, whole_flow[first : first + L, top : top + crop, left : left + crop]
        )
