"""Dense optical flow between consecutive frames of a window, and its uint8 storage form.

A flow estimator takes a window of frames, uint8 ``(N, H, W, 3)`` RGB, and returns
float32 ``(N-1, H, W, 2)`` in pixels: ``flow[i]`` goes from frame ``i`` to frame
``i+1``, channel 0 is x (+right) and channel 1 is y (+down), so that
``frame_i(p) ≈ frame_{i+1}(p + flow_i(p))``.

Backends (``FLOW_BACKENDS``):

- ``dis``: OpenCV DIS (Kroeger et al. 2016) on CPU, the default, preset
  ``ultrafast``: the fastest preset, and it recovers a known translation to under
  0.1 px, well within the 0.5 px the tests ask for. ``medium`` is finer on real
  motion boundaries at about a tenth of the speed.
- ``farneback``: OpenCV Farneback polynomial expansion on CPU.
- ``tvl1``: OpenCV contrib Dual TV-L1 (the flow of the two-stream and I3D papers),
  accurate and slow; needs ``opencv-contrib-python-headless``.
- ``raft``: torchvision RAFT (small or large) on GPU when there is one.

Measured on one CPU core, a 32-frame 128x170 window (frames/s): dis ultrafast
~7900, dis fast ~4100, dis medium ~850, farneback ~370, tvl1 ~6.

The CPU backends leave OpenCV's global thread count alone: a Ray worker decides
how many threads it may use. torch is imported only when a RAFT estimator is built.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np

from vidray.errors import VidrayError

FLOW_BACKENDS = ("dis", "farneback", "tvl1", "raft")
DIS_PRESETS = ("ultrafast", "fast", "medium")
RAFT_MODELS = ("raft_small", "raft_large")

# OpenCV 5's DIS (ultrafast and fast presets) crashes the process (SIGSEGV) on frames
# under 32 rows that are 3 or more times as wide (e.g. 24x96), and refuses wider ones
# and frames under 12 px a side; 32 rows and up were checked to 5000 columns. A tiny
# source stored at up to ingest.max_upscale times its size can be that small.
_DIS_MIN_SIZE = 32

# RAFT's encoders downsample by 8, and torchvision's correlation pyramid refuses
# feature maps under 16 cells a side: 128 px is the smallest input it takes.
_RAFT_MULTIPLE = 8
_RAFT_MIN_SIZE = 128

# Values quantized at a time: 32k floats (128 KiB) stay in L2 cache.
_QUANTIZE_CHUNK = 1 << 15


class FlowEstimator(Protocol):
    """A flow backend, built once per worker and called on window after window."""

    backend: str
    # True when a pair's flow depends on that pair alone, bit for bit, so ingest may
    # compute a pair shared by overlapping windows once (`vidray.data.window_rows`).
    per_pair: bool

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Flow of a uint8 (N, H, W, 3) RGB window as float32 (N-1, H, W, 2) pixels."""
        ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"flow needs uint8 frames shaped (N, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if frames.shape[0] < 2:
        raise ValueError(f"flow needs at least 2 frames, got {frames.shape[0]}")
    # OpenCV wants each frame contiguous; a strided window view would not be.
    return np.ascontiguousarray(frames)


class OpenCVFlow:
    """Flow from an OpenCV ``DenseOpticalFlow`` object, one gray frame pair at a time.

    DIS, Farneback and TV-L1 all share OpenCV's ``calc(prev, next, flow)``
    interface and its flow convention, so they differ only in the object built by
    ``make_algorithm``. Each pair gets a fresh object: DIS keeps state from one call
    to the next, and on small frames (32x42) its first call differs from later ones
    by up to 0.03 px, so a window's flow would depend on which windows the worker
    saw before (a segmented ingest then stored other bytes than a whole one).
    Building the object costs nothing measurable next to ``calc``, and a pair's
    flow depends on that pair alone (``per_pair``).
    Frames smaller than ``min_size`` a side are replicate-padded at the bottom and
    right, and the flow cropped back.
    """

    def __init__(
        self, *, backend: str, make_algorithm: Callable[[], Any], min_size: int = 1
    ) -> None:
        self.backend = backend
        self.per_pair = True
        self.make_algorithm = make_algorithm
        self.min_size = min_size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Flow of a uint8 (N, H, W, 3) RGB window as float32 (N-1, H, W, 2) pixels."""
        frames = _check_frames(frames)
        n, h, w, _ = frames.shape
        pad_h, pad_w = max(0, self.min_size - h), max(0, self.min_size - w)
        gray = [
            cv2.copyMakeBorder(
                cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE
            )
            for frame in frames
        ]
        flow = np.empty((n - 1, h, w, 2), dtype=np.float32)
        for i in range(n - 1):
            flow[i] = self.make_algorithm().calc(gray[i], gray[i + 1], None)[:h, :w]
        return flow


class RaftFlow:
    """Flow from a torchvision RAFT model, batched over the frame pairs of a window.

    Frames are scaled to [-1, 1] (what torchvision's RAFT weights were trained on),
    replicate-padded at the bottom and right to a size RAFT accepts, and the flow is
    cropped back, so padding never shifts the output.
    """

    backend = "raft"
    # Batched convolutions may round a pair differently next to other pairs (the
    # batch-size test allows 1e-4 px), so a window's pairs are computed together.
    per_pair = False

    def __init__(
        self, *, model: Any, device: Any, batch_size: int = 8, num_flow_updates: int = 12
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.num_flow_updates = num_flow_updates

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Flow of a uint8 (N, H, W, 3) RGB window as float32 (N-1, H, W, 2) pixels."""
        import torch
        import torch.nn.functional as F

        frames = _check_frames(frames)
        n, h, w, _ = frames.shape
        pad_h = _raft_size(h) - h
        pad_w = _raft_size(w) - w
        flow = np.empty((n - 1, h, w, 2), dtype=np.float32)
        with torch.inference_mode():
            # A chunk holds batch_size pairs, i.e. batch_size + 1 frames, so GPU
            # memory stays bounded however long the window is.
            for start in range(0, n - 1, self.batch_size):
                stop = min(start + self.batch_size, n - 1)
                chunk = torch.from_numpy(frames[start : stop + 1]).to(self.device)
                chunk = chunk.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
                chunk = F.pad(chunk, (0, pad_w, 0, pad_h), mode="replicate")
                predictions = self.model(
                    chunk[:-1], chunk[1:], num_flow_updates=self.num_flow_updates
                )
                # RAFT returns one prediction per update; the last is the refined one.
                pair_flow = predictions[-1][:, :, :h, :w].permute(0, 2, 3, 1)
                flow[start:stop] = pair_flow.float().cpu().numpy()
        return flow


def _raft_size(size: int) -> int:
    size = max(size, _RAFT_MIN_SIZE)
    return -(-size // _RAFT_MULTIPLE) * _RAFT_MULTIPLE


def _opencv_algorithm(backend: str, dis_preset: str) -> Callable[[], Any]:
    if backend == "dis":
        if dis_preset not in DIS_PRESETS:
            raise VidrayError(
                f"unknown DIS preset '{dis_preset}': use one of {', '.join(DIS_PRESETS)}"
            )
        preset = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{dis_preset.upper()}")
        return functools.partial(cv2.DISOpticalFlow_create, preset)
    if backend == "farneback":
        # The object behind cv2.calcOpticalFlowFarneback, with the parameters of
        # OpenCV's dense-flow tutorial: 3 pyramid levels cover the motions of a
        # 128 px frame at 10 fps, and a 15 px window smooths over compression noise.
        return functools.partial(
            cv2.FarnebackOpticalFlow_create,
            numLevels=3,
            pyrScale=0.5,
            winSize=15,
            numIters=3,
            polyN=5,
            polySigma=1.2,
        )
    if not hasattr(cv2, "optflow"):
        raise VidrayError(
            "flow backend 'tvl1' needs OpenCV's contrib modules: "
            "pip install opencv-contrib-python-headless (instead of opencv-python-headless)"
        )
    # OpenCV's defaults are the TV-L1 settings the two-stream literature used.
    return cv2.optflow.DualTVL1OpticalFlow_create


def _load_raft(
    *, raft_model: str, raft_weights: str | os.PathLike | None, random_init: bool
) -> Any:
    from torchvision.models import get_model_weights, optical_flow

    from vidray.state_dicts import read_state_dict

    if raft_model not in RAFT_MODELS:
        raise VidrayError(f"unknown RAFT model '{raft_model}': use one of {', '.join(RAFT_MODELS)}")
    model = getattr(optical_flow, raft_model)(weights=None)
    if raft_weights is None:
        if not random_init:
            raise VidrayError(
                "flow backend 'raft' needs weights: set raft_weights to a state_dict file "
                f"or a torchvision weights name such as {get_model_weights(raft_model).C_T_V2}"
            )
        return model
    state = read_state_dict(os.fspath(raft_weights), enum=get_model_weights(raft_model))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise VidrayError(
            f"RAFT weights {raft_weights} do not fit {raft_model} ({first_line}); check raft_model"
        ) from exc
    return model


def load_flow_estimator(
    backend: str = "dis",
    *,
    dis_preset: str = "fast",
    raft_model: str = "raft_small",
    raft_weights: str | os.PathLike | None = None,
    raft_random_init: bool = False,
    raft_batch_size: int = 8,
    device: str | None = None,
) -> FlowEstimator:
    """Build a flow estimator once, to be called on every window a worker handles.

    Args:
        backend: one of ``FLOW_BACKENDS``.
        dis_preset: DIS preset, one of ``DIS_PRESETS``; ``ultrafast`` is the fastest
            and is accurate to a few hundredths of a pixel on a textured translation.
        raft_model: ``raft_small`` or ``raft_large``.
        raft_weights: a file holding a ``state_dict`` saved with ``torch.save``, or a
            torchvision weights name such as ``Raft_Small_Weights.C_T_V2`` (fetched
            through torchvision's registry into the torch hub cache).
        raft_random_init: allow ``raft_weights=None`` to mean randomly initialised
            weights; only tests ask for that, because random RAFT flow is noise.
        raft_batch_size: frame pairs per RAFT forward pass, which bounds GPU memory.
        device: torch device for RAFT; ``None`` picks ``cuda`` when available, else ``cpu``.

    Returns:
        A callable ``(frames uint8 (N, H, W, 3)) -> flow float32 (N-1, H, W, 2)``.

    Raises:
        VidrayError: an unknown backend, preset or model, TV-L1 without OpenCV's
            contrib modules, or RAFT weights that are missing or do not fit.
    """
    if backend not in FLOW_BACKENDS:
        raise VidrayError(
            f"unknown flow backend '{backend}': use one of {', '.join(FLOW_BACKENDS)}"
        )
    if backend != "raft":
        return OpenCVFlow(
            backend=backend,
            make_algorithm=_opencv_algorithm(backend, dis_preset),
            min_size=_DIS_MIN_SIZE if backend == "dis" else 1,
        )

    import torch

    model = _load_raft(
        raft_model=raft_model, raft_weights=raft_weights, random_init=raft_random_init
    )
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(torch_device).eval().requires_grad_(False)
    return RaftFlow(model=model, device=torch_device, batch_size=raft_batch_size)


def quantize_flow(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Store flow as uint8: clip to [-bound, bound], map linearly onto 0..255, round.

    127.5 stands for zero motion (so +0 is stored as 128, -0 as 127, both read back
    as ``±bound/255``). ``dequantize_flow(quantize_flow(f, b), b)`` differs from ``f``
    by at most half a step, ``bound / 255``, for values inside the bound (within
    the ``bound / 127`` the data contract allows); values beyond the bound come
    back as ``±bound``. The mapping is symmetric about 127.5 for every float,
    ``quantize_flow(-f) == 255 - quantize_flow(f)``, so a horizontal flip of stored
    flow (``255 - q`` on x) equals the quantized flow of the flipped video.
    """
    if bound <= 0:
        raise ValueError(f"flow bound must be positive, got {bound}")
    values = np.asarray(flow, dtype=np.float32).reshape(-1)
    quantized = np.empty(values.shape, np.uint8)
    scale = np.float32(127.5 / bound)
    # Chunks that stay in cache, and temporaries small enough for malloc to reuse
    # (a window's worth each were fresh pages, at 2-3x the arithmetic's CPU).
    for start in range(0, values.size, _QUANTIZE_CHUNK):
        part = values[start : start + _QUANTIZE_CHUNK]
        levels = quantized[start : start + _QUANTIZE_CHUNK]
        # The magnitude is rounded as a positive value always was (float32
        # |x| * scale, + 127.5, half to even: convertScaleAbs adds, rounds and
        # saturates at 255, which is the clip to the bound); a negative value takes
        # the mirror level 255 - q. Rounding the signed value broke the symmetry
        # at ties (0 went to 128 either way).
        magnitude = np.multiply(np.abs(part), scale)
        cv2.convertScaleAbs(magnitude[None], levels[None], alpha=1.0, beta=127.5)
        mirror = np.negative(np.signbit(part).view(np.uint8))  # 255 where negative
        np.bitwise_xor(levels, mirror, out=levels)
    return quantized.reshape(np.shape(flow))


def dequantize_flow(quantized: np.ndarray, bound: float) -> np.ndarray:
    """Inverse of ``quantize_flow``: uint8 back to float32 pixels in [-bound, bound]."""
    if bound <= 0:
        raise ValueError(f"flow bound must be positive, got {bound}")
    return (quantized.astype(np.float32) - 127.5) * np.float32(bound / 127.5)
