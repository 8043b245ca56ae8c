"""Coded window rows: every pixel says which frame and place it comes from, so a test
reads a clip's offset and crop back from the clip alone."""

from __future__ import annotations

import numpy as np

from vidray.data.shards import encode_images

W = 16  # frames a window holds


def coded_window(height, width, video_id="a/b"):
    """Pixel (x, y) of frame i holds (x, 10*i, y): a clip tells its offset and crop.
    Flow at (x, y) is (100 + x, 200 - x) in every field: it tells left from right too."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.stack(
        [np.stack([xs, np.full_like(xs, 10 * i), ys], axis=-1) for i in range(W)]
    ).astype(np.uint8)
    flow = np.broadcast_to(np.stack([100 + xs, 200 - xs], axis=-1), (W - 1, height, width, 2))
    return {
        "video_key": 7,
        "video_id": video_id,
        "label": 2,
        "height": height,
        "width": width,
        "frames_codec": "raw",
        "frames": encode_images(frames, codec="raw"),
        "flow_codec": "raw",
        "flow": encode_images(flow.astype(np.uint8), codec="raw"),
    }


def clip_views(frames):
    """(first frame index, top, left) of each clip in a batch of coded clips."""
    return [(int(c[0, 0, 0, 1]) // 10, int(c[0, 0, 0, 2]), int(c[0, 0, 0, 0])) for c in frames]
