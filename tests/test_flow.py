"""Optical flow backends: accuracy on a known motion, conventions, storage, RAFT plumbing."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vidray.config import load_config
from vidray.data.flow import (
    FLOW_BACKENDS,
    dequantize_flow,
    load_flow_estimator,
    quantize_flow,
)
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest
from vidray.data.shards import decode_images, read_windows
from vidray.data.synthetic import write_video
from vidray.errors import VidrayError

REPO = Path(__file__).resolve().parents[1]

CPU_BACKENDS = ("dis", "farneback", "tvl1")
MARGIN = 16  # pixels near the border see content entering the frame; judge the interior


def moving_texture(*, shifts, size=(96, 96), seed=0):
    """Frames of a smooth random texture, frame i translated by shifts[i] pixels (x, y)."""
    h, w = size
    pad = 24
    rng = np.random.default_rng(seed)
    noise = rng.random((h + 2 * pad, w + 2 * pad, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 255
    frames = []
    for dx, dy in shifts:
        # warpAffine maps source point p to p + (dx, dy): the content moves by (dx, dy).
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(
            texture, matrix, (w + 2 * pad, h + 2 * pad), borderMode=cv2.BORDER_REFLECT
        )
        frames.append(moved[pad : pad + h, pad : pad + w])
    return np.stack(frames).round().astype(np.uint8)


def interior_mean(flow):
    return flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(-1, 2).mean(axis=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shift", [(2.0, -1.0), (0.5, 1.5)])
def test_cpu_backend_recovers_a_known_shift(backend, shift):
    dx, dy = shift
    frames = moving_texture(shifts=[(0, 0), (dx, dy), (2 * dx, 2 * dy)])
    flow = load_flow_estimator(backend)(frames)
    assert flow.shape == (2, 96, 96, 2)
    assert flow.dtype == np.float32
    for pair in flow:
        np.testing.assert_allclose(interior_mean(pair[None]), shift, atol=0.5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_moving_right_and_down_gives_positive_x_and_y(backend):
    estimate = load_flow_estimator(backend)
    right = interior_mean(estimate(moving_texture(shifts=[(0, 0), (3, 0)])))
    down = interior_mean(estimate(moving_texture(shifts=[(0, 0), (0, 3)])))
    assert right[0] > 2 and abs(right[1]) < 0.5
    assert down[1] > 2 and abs(down[0]) < 0.5


def test_estimator_is_reused_across_windows_of_different_sizes():
    estimate = load_flow_estimator("dis")
    small = estimate(moving_texture(shifts=[(0, 0), (1, 0)], size=(40, 60)))
    large = estimate(moving_texture(shifts=[(0, 0), (1, 0), (2, 0), (3, 0)], size=(96, 128)))
    assert small.shape == (1, 40, 60, 2)
    assert large.shape == (3, 96, 128, 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("size", [(32, 42), (96, 96)])
def test_a_pairs_flow_does_not_depend_on_what_the_estimator_saw_before(backend, size):
    # DIS used to keep state between calls: on 32x42 frames, the first pair an
    # estimator saw came out up to 0.03 px off from the same pair seen later.
    frames = moving_texture(shifts=[(0, 0), (1.5, 0.5), (3, 1)], size=size)
    estimate = load_flow_estimator(backend)
    first = estimate(frames)
    np.testing.assert_array_equal(estimate(frames), first)
    np.testing.assert_array_equal(load_flow_estimator(backend)(frames[1:])[0], first[1])


def test_flow_rejects_a_single_frame_or_float_frames():
    estimate = load_flow_estimator("dis")
    with pytest.raises(ValueError, match="at least 2 frames"):
        estimate(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        estimate(np.zeros((2, 32, 32, 3), np.float32))


def test_unknown_backend_error_lists_the_backends():
    with pytest.raises(VidrayError) as error:
        load_flow_estimator("lucas-kanade")
    for name in FLOW_BACKENDS:
        assert name in str(error.value)


def test_unknown_dis_preset_is_an_error():
    with pytest.raises(VidrayError, match="ultrafast"):
        load_flow_estimator("dis", dis_preset="warp-speed")


def test_tvl1_without_opencv_contrib_names_the_package(monkeypatch):
    monkeypatch.delattr(cv2, "optflow")
    with pytest.raises(VidrayError, match="opencv-contrib-python-headless"):
        load_flow_estimator("tvl1")


def test_dis_takes_frames_smaller_or_wider_than_opencv_does():
    """OpenCV's DIS kills the process on a short, wide frame (what a tiny source
    enlarged at most ingest.max_upscale times can be): run it where a crash
    cannot take pytest down, and check the flow is still right."""
    code = (
        "import sys, numpy as np\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_flow import moving_texture\n"
        "from vidray.data.flow import load_flow_estimator\n"
        "estimate = load_flow_estimator('dis')\n"
        "for h, w in [(2, 2), (10, 10), (8, 100), (100, 8), (24, 96), (28, 400)]:\n"
        "    frames = np.random.default_rng(0).integers(0, 256, (3, h, w, 3), dtype=np.uint8)\n"
        "    assert estimate(frames).shape == (2, h, w, 2), (h, w)\n"
        "flow = estimate(moving_texture(shifts=[(0, 0), (1.0, 0)], size=(24, 96)))\n"
        "mean = flow[:, 4:-4, 16:-16].reshape(-1, 2).mean(axis=0)\n"
        "assert abs(mean[0] - 1.0) < 0.3 and abs(mean[1]) < 0.3, mean\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"


def test_cpu_backends_do_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from vidray.data.flow import load_flow_estimator\n"
        "load_flow_estimator('dis')(np.zeros((2, 16, 16, 3), np.uint8))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_quantize_round_trip_error_is_within_half_a_step():
    bound = 20.0
    rng = np.random.default_rng(0)
    flow = rng.uniform(-bound, bound, size=(3, 8, 9, 2)).astype(np.float32)
    flow[0, 0, 0] = (-bound, bound)
    flow[0, 0, 1] = (0.0, 0.0)
    quantized = quantize_flow(flow, bound)
    assert quantized.dtype == np.uint8
    assert quantized.shape == flow.shape
    restored = dequantize_flow(quantized, bound)
    assert restored.dtype == np.float32
    error = np.abs(restored - flow).max()
    assert error <= bound / 127
    assert error <= bound / 255 + 1e-5


def test_quantize_clips_beyond_the_bound():
    bound = 5.0
    flow = np.array([[-100.0, 100.0], [-5.0, 5.0]], np.float32)
    quantized = quantize_flow(flow, bound)
    np.testing.assert_array_equal(quantized, [[0, 255], [0, 255]])
    np.testing.assert_array_equal(dequantize_flow(quantized, bound), [[-5, 5], [-5, 5]])


def test_quantize_maps_zero_motion_to_the_middle():
    assert quantize_flow(np.zeros(1, np.float32), 20.0)[0] in (127, 128)


def quantize_the_old_way(flow, bound):
    """quantize_flow before issue 14: clip, scale, shift, round half to even."""
    scaled = np.clip(flow, -bound, bound) * (127.5 / bound) + 127.5
    return np.rint(scaled).astype(np.uint8)


def floats_around(values, ulps=40):
    """Each float32 value and its `ulps` nearest float32 neighbours on either side."""
    values = np.asarray(values, np.float32)
    steps = np.arange(-ulps, ulps + 1, dtype=np.float32)[:, None]
    around = values + steps * np.spacing(np.maximum(np.abs(values), np.float32(1e-38)))
    return np.concatenate([values, around.ravel()])


@pytest.mark.parametrize("bound", [20.0, 7.3, 1.0])
def test_quantize_is_exactly_symmetric_so_a_flip_is_255_minus_q(bound):
    scale = np.float32(127.5 / bound)
    ties = np.arange(-128, 129, dtype=np.float32) / scale  # 127.5 + x * scale on a .5
    dense = np.linspace(-2 * bound, 2 * bound, 400_001, dtype=np.float32)
    x = np.concatenate(
        [
            floats_around(ties),  # the rounding ties, incl. zero
            floats_around([bound, -bound, 2 * bound]),  # the bound and beyond it
            dense,
            [0.0, -0.0, 1e30, -1e30, np.inf, -np.inf],
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(quantize_flow(-x, bound), 255 - quantize_flow(x, bound))
    # Only the ties (and floats that round onto one) may go to the other level than
    # they used to: a positive value keeps its old level, a negative one mirrors it.
    positive = ~np.signbit(x)
    old = quantize_the_old_way(np.abs(x), bound)
    np.testing.assert_array_equal(quantize_flow(x, bound), np.where(positive, old, 255 - old))


def test_quantize_stores_random_fields_as_before():
    rng = np.random.default_rng(1)
    for bound in (20.0, 5.0):
        flow = rng.normal(0, bound / 2, size=(15, 64, 84, 2)).astype(np.float32)
        old = quantize_the_old_way(flow, bound)
        # The old rounding of 127.5 + x * scale rounded a negative x's sum on a finer
        # float grid than its mirror's, so a few values a hair from a tie were stored
        # one level off the mirror of -x. A negative value now takes the mirror of its
        # magnitude's level; every other value is stored as it was.
        expected = np.where(np.signbit(flow), 255 - quantize_the_old_way(-flow, bound), old)
        assert 0 < (expected != old).sum() < 1e-4 * flow.size
        np.testing.assert_array_equal(quantize_flow(flow, bound), expected)


def test_quantize_rejects_a_non_positive_bound():
    with pytest.raises(ValueError, match="positive"):
        quantize_flow(np.zeros(1, np.float32), 0.0)


@pytest.fixture(scope="module")
def raft_small_weights(tmp_path_factory):
    """A randomly initialised raft_small state_dict, saved the way a user would."""
    import torch
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small.pt"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def test_raft_loads_a_saved_state_dict_and_crops_back_to_an_odd_size(raft_small_weights):
    import torch

    estimate = load_flow_estimator("raft", raft_weights=str(raft_small_weights), device="cpu")
    saved = torch.load(raft_small_weights, weights_only=True)
    loaded = estimate.model.state_dict()
    assert all(torch.equal(saved[name], loaded[name].cpu()) for name in saved)

    frames = moving_texture(shifts=[(0, 0), (1, 0)], size=(50, 70))
    flow = estimate(frames)
    assert flow.shape == (1, 50, 70, 2)
    assert flow.dtype == np.float32
    assert np.isfinite(flow).all()


def test_raft_result_does_not_depend_on_the_batch_size(raft_small_weights):
    frames = moving_texture(shifts=[(0, 0), (1, 0), (2, 0)], size=(40, 48))
    one = load_flow_estimator(
        "raft", raft_weights=raft_small_weights, raft_batch_size=1, device="cpu"
    )(frames)
    both = load_flow_estimator(
        "raft", raft_weights=raft_small_weights, raft_batch_size=2, device="cpu"
    )(frames)
    assert one.shape == (2, 40, 48, 2)
    np.testing.assert_allclose(one, both, atol=1e-4)


def test_raft_weights_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(VidrayError, match="file not found"):
        load_flow_estimator("raft", raft_weights=str(tmp_path / "missing.pt"), device="cpu")


def test_raft_weights_for_another_model_are_an_error(raft_small_weights):
    with pytest.raises(VidrayError, match="do not fit raft_large"):
        load_flow_estimator(
            "raft", raft_model="raft_large", raft_weights=raft_small_weights, device="cpu"
        )


def test_raft_registry_name_for_another_model_is_an_error():
    with pytest.raises(VidrayError, match="Raft_Small_Weights"):
        load_flow_estimator("raft", raft_weights="Raft_Large_Weights.C_T_V2", device="cpu")


def test_raft_without_weights_needs_an_explicit_random_init():
    with pytest.raises(VidrayError, match="needs weights"):
        load_flow_estimator("raft", device="cpu")
    estimate = load_flow_estimator("raft", raft_random_init=True, device="cpu")
    assert estimate.backend == "raft"


# ------------------------------------------------------------- stored flow, end to end

# A texture moving right, and one moving down, by SHIFT source pixels a frame; stored
# at short side 64 from 96 rows, that is 2/3 as many stored pixels.
SHIFT = 3.0
STORED_SHIFT = SHIFT * 64 / 96


@pytest.fixture(scope="module", params=["raw", "jpeg"])
def stored_motion(request, ray_local, tmp_path_factory):
    """The flow column of a right- and a down-moving video, ingested with flow.codec
    raw or jpeg, dequantized as a reader does: {video_id: (windows, N-1, H, W, 2)}."""
    root = tmp_path_factory.mktemp(f"motion_{request.param}")
    for name, step in (("right", (SHIFT, 0.0)), ("down", (0.0, SHIFT))):
        frames = moving_texture(
            shifts=[(i * step[0], i * step[1]) for i in range(9)], size=(96, 144)
        )
        write_video(root / "videos" / name / "v.mp4", frames, fps=10, options={"crf": "10"})
    cfg = load_config(
        None,
        [
            f"ingest.input={root / 'videos'}",
            f"ingest.output={root / 'data'}",
            "ingest.short_side=64",
            "ingest.window_frames=8",
            "ingest.window_stride=8",
            "ingest.val_fraction=0",
            f"flow.codec={request.param}",
        ],
    )
    run_ingest(cfg, log=lambda line: None)
    shards = [
        root / "data" / "windows" / s for row in read_manifest(root / "data") for s in row["shards"]
    ]
    table = read_windows(shards).to_pylist()
    assert {row["flow_codec"] for row in table} == {request.param}
    return {
        row["video_id"]: dequantize_flow(
            decode_images(
                row["flow"],
                codec=row["flow_codec"],
                height=row["height"],
                width=row["width"],
                channels=2,
            ),
            row["flow_bound"],
        )
        for row in table
    }


def test_stored_flow_has_the_sign_axis_and_size_of_the_motion(stored_motion):
    right, down = stored_motion["right/v"], stored_motion["down/v"]
    assert right.shape == down.shape == (7, 64, 96, 2)
    margin = 12
    for flow, expected in ((right, (STORED_SHIFT, 0.0)), (down, (0.0, STORED_SHIFT))):
        interior = flow[:, margin:-margin, margin:-margin].reshape(-1, 2)
        np.testing.assert_allclose(interior.mean(axis=0), expected, atol=0.2)
        # Nearly every pixel moves that way, not just the average.
        along = interior[:, int(expected[1] > 0)]
        assert np.mean(np.abs(along - STORED_SHIFT) < 0.75) > 0.9
