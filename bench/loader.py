"""Benchmark: training clips/s from the Parquet shards against decoding videos on the fly.

A generated motion dataset (default 48 videos of 64 frames at 10 fps, 192x144) is
ingested once per storage variant (fps 10, short side 128, windows of 32 frames,
DIS flow), then training clips of the ``train`` split are produced three ways:

- **loader, in-process**: ``vidray.data.clips.iter_clip_batches`` (pyarrow batches
  of 32 windows through ``ClipSampler``), in this process, one thread;
- **loader, Ray Data**: ``read_clips(...).iter_batches(batch_size=32)`` on a local
  Ray with ``--cpus`` CPUs (one untimed warm-up epoch first);
- **on the fly**: the same clips decoded straight from the videos with PyAV in this
  process, one thread: ``decode.iter_frames`` from the clip's first frame (seeking
  to the keyframe before it) at the stored fps and short side, every stride-th
  frame kept, random crop and flip; for rgb+flow also the L+1 frames under the
  clip's flow stack, their flow with the same backend (DIS) at stored size,
  quantized to uint8, cropped and flipped like the loader's.

Modes: ``rgb`` (T=8, stride 2, crop 112) and ``rgb+flow`` (the same plus L=10
flow fields). Each measurement runs whole epochs until ``--min-seconds`` pass.

How to read the ratios::

    loader(in-process) / on-the-fly           both one process, one thread
    loader(Ray Data) / (on-the-fly x CPUs)    Ray's clips/s per CPU against one process

Targets: >= 3 for rgb, >= 10 for rgb+flow. A ratio says how much cheaper reading a
stored clip is than making it from the video; the Ray Data ratio also pays Ray
Data's per-epoch start-up and per-batch overhead.

The codec table compares the storage variants, frames raw|jpeg x flow raw|jpeg:
bytes on disk per window (the whole shard, and the frames and flow columns
alone, zstd-1 compressed as written) and in-process loader clips/s in both modes.

    PYTHONPATH=. python bench/loader.py            # default sizes (~2 min on 2 cores)
    PYTHONPATH=. python bench/loader.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import benchutil as bu
import numpy as np
import pyarrow.parquet as pq

from vidray.config import ClipConfig
from vidray.data import decode
from vidray.data.clips import iter_clip_batches, read_clips, window_files
from vidray.data.flow import load_flow_estimator, quantize_flow
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest
from vidray.data.shards import read_windows

TARGETS = {"rgb": 3.0, "rgb+flow": 10.0}
SPLIT = "train"
BATCH = 32
# (frames codec, flow codec); the first is the ingest default and the main comparison.
VARIANTS = [("jpeg", "raw"), ("raw", "raw"), ("jpeg", "jpeg"), ("raw", "jpeg")]


def measure(epoch: Callable[[], Iterable[dict[str, np.ndarray]]], min_seconds: float) -> float:
    """Clips/s over whole epochs, run until at least `min_seconds` have passed."""
    clips = 0
    t0 = time.perf_counter()
    while True:
        for batch in epoch():
            clips += len(batch["label"])
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return clips / elapsed


class OnTheFly:
    """Training clips decoded from the source videos, as a loader without shards would.

    Uses the windows' positions from the shards only to pick the same kind of
    clips (same videos, same window starts, random offset, crop and flip).
    """

    def __init__(self, data_dir: Path, *, clip: ClipConfig, flow_L: int, seed: int = 0) -> None:
        paths = {row["video_id"]: row["path"] for row in read_manifest(data_dir)}
        table = read_windows(
            window_files(data_dir),
            columns=["video_id", "split", "start_sec", "fps", "height", "width", "frames"],
        )
        self.windows = [
            dict(row, path=paths[row["video_id"]], n=len(row.pop("frames")))
            for row in table.to_pylist()
            if row["split"] == SPLIT
        ]
        self.clip, self.flow_L = clip, flow_L
        self.rng = np.random.default_rng(seed)
        self.estimator = load_flow_estimator("dis", dis_preset="fast") if flow_L else None

    def epoch(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.windows), BATCH):
            rows = self.windows[start : start + BATCH]
            clips = [self.sample(row) for row in rows]
            batch = {
                "frames": np.stack([c[0] for c in clips]),
                "label": np.zeros(len(rows), np.int64),
            }
            if self.flow_L:
                batch["flow"] = np.stack([c[1] for c in clips])
            yield batch

    def sample(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        T, stride, crop, L = self.clip.T, self.clip.stride, self.clip.crop, self.flow_L
        n, fps, height, width = row["n"], float(row["fps"]), row["height"], row["width"]
        rng = self.rng
        span = (T - 1) * stride + 1
        start = int(rng.integers(0, n - span + 1))
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
        flip = bool(rng.integers(0, 2))
        # The loader's choice of flow fields: L centred on the clip, inside the window.
        first = min(max(start + span // 2 - L // 2, 0), n - 1 - L) if L else start
        lo = min(start, first)
        hi = max(start + span, first + L + 1 if L else 0)
        decoded = list(
            itertools.islice(
                decode.iter_frames(
                    row["path"],
                    fps=fps,
                    short_side=min(height, width),
                    start_sec=row["start_sec"] + lo / fps,
                    threads=1,
                ),
                hi - lo,
            )
        )
        frames = np.stack(decoded[start - lo : start - lo + span : stride])
        frames = frames[:, top : top + crop, left : left + crop]
        flow = None
        if L:
            assert self.estimator is not None
            stack = np.stack(decoded[first - lo : first - lo + L + 1])
            flow = quantize_flow(self.estimator(stack), 20.0)
            flow = flow[:, top : top + crop, left : left + crop]
        if flip:
            frames = frames[:, :, ::-1]
            if flow is not None:
                flow = flow[:, :, ::-1].copy()
                flow[..., 0] = 255 - flow[..., 0]
        return np.ascontiguousarray(frames), None if flow is None else np.ascontiguousarray(flow)


def column_bytes(data_dir: Path) -> dict[str, int]:
    """Compressed bytes on disk per top-level column, summed over all shards."""
    out: dict[str, int] = {}
    for path in window_files(data_dir):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                name = column.path_in_schema.split(".")[0]
                out[name] = out.get(name, 0) + column.total_compressed_size
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bu.add_dataset_args(parser)
    parser.add_argument("--T", type=int, default=8, help="clip frames")
    parser.add_argument("--stride", type=int, default=2, help="clip temporal stride")
    parser.add_argument("--crop", type=int, default=112, help="clip crop size")
    parser.add_argument("--L", type=int, default=10, help="flow fields in rgb+flow mode")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="time each measurement at least this long"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.min_seconds = min(args.videos, 8), 0.5
    cpus = bu.cpu_count(args.cpus)
    bu.single_thread_opencv()
    clip = ClipConfig(T=args.T, stride=args.stride, crop=args.crop)
    modes = {"rgb": 0, "rgb+flow": args.L}

    print(f"bench/loader: {bu.load()} (before)")
    with bu.workdir(args.workdir) as work:
        t_gen, paths = bu.timed(
            lambda: bu.make_videos(
                work / "videos",
                videos=args.videos,
                frames=args.frames,
                fps=args.video_fps,
                size=args.size,
            )
        )
        width, height = args.size
        print(
            f"dataset: {len(paths)} videos x {args.frames} frames at {args.video_fps:g} fps, "
            f"{width}x{height} (generated in {t_gen:.1f} s); "
            f"clips: T={clip.T} stride={clip.stride} crop={clip.crop}, L={args.L} in rgb+flow; "
            f"split={SPLIT}, batches of {BATCH}"
        )
        t_init = bu.start_ray(cpus)
        warm = bu.copy_subset(paths[:2], work / "videos", work / "warm_videos")
        run_ingest(bu.ingest_config(warm, work / "warm_out"), log=lambda _: None)
        print(f"ray: local, {cpus} CPUs (ray.init {t_init:.1f} s and a warm-up ingest, untimed)")

        # --- ingest each storage variant once
        dirs: dict[tuple[str, str], Path] = {}
        codec_rows: list[list[Any]] = []
        for frames_codec, flow_codec in VARIANTS:
            out = work / f"data_{frames_codec}_{flow_codec}"
            cfg = bu.ingest_config(
                work / "videos",
                out,
                [f"ingest.frames_codec={frames_codec}", f"flow.codec={flow_codec}"],
            )
            if not (out / "dataset.yaml").exists():
                seconds, summary = bu.timed(lambda cfg=cfg: run_ingest(cfg, log=lambda _: None))
                ingest_rate = f"{summary.windows / seconds:.1f}"
            else:
                ingest_rate = "(reused)"
            dirs[frames_codec, flow_codec] = out
            windows = sum(r["n_windows"] for r in read_manifest(out) if r["status"] == "ok")
            first = pq.read_table(window_files(out)[0], columns=["height", "width"])
            shape = f"{first['width'][0]}x{first['height'][0]}"
            cols = column_bytes(out)
            total = bu.dir_bytes(out / "windows", "*.parquet")
            row: list[Any] = [
                f"frames {frames_codec:<4} flow {flow_codec:<4}",
                total / windows / 1e3,
                cols["frames"] / windows / 1e3,
                cols["flow"] / windows / 1e3,
                ingest_rate,
            ]
            for flow_L in modes.values():
                row.append(
                    measure(
                        lambda out=out, flow_L=flow_L: iter_clip_batches(
                            out,
                            split=SPLIT,
                            clip=clip,
                            flow_L=flow_L,
                            train=True,
                            batch_rows=BATCH,
                        ),
                        args.min_seconds,
                    )
                )
            codec_rows.append(row)
        print()
        print(
            bu.table(
                [
                    "storage variant",
                    "kB/window",
                    "frames kB",
                    "flow kB",
                    "ingest win/s",
                    "rgb clips/s",
                    "rgb+flow clips/s",
                ],
                codec_rows,
                title=f"storage variants ({windows} windows of 32 frames of {shape}, "
                "zstd-1 Parquet; loader clips/s in-process, 1 thread)",
            )
        )

        # --- the main comparison on the default variant
        data = dirs[VARIANTS[0]]
        results: dict[str, dict[str, float]] = {}
        for mode, flow_L in modes.items():
            in_process = codec_rows[0][5 + list(modes).index(mode)]
            ds = read_clips(data, split=SPLIT, clip=clip, flow_L=flow_L, train=True)
            for _ in ds.iter_batches(batch_size=BATCH):  # warm-up epoch: workers, imports
                pass
            ray_rate = measure(lambda ds=ds: ds.iter_batches(batch_size=BATCH), args.min_seconds)
            fly = OnTheFly(data, clip=clip, flow_L=flow_L)
            fly_rate = measure(fly.epoch, args.min_seconds)
            results[mode] = dict(fly=fly_rate, in_process=in_process, ray=ray_rate)
        rows = [
            [
                mode,
                r["fly"],
                r["in_process"],
                r["ray"],
                f"{r['in_process'] / r['fly']:.1f}x",
                f"{r['ray'] / (r['fly'] * cpus):.1f}x",
                f">= {TARGETS[mode]:g}x",
            ]
            for mode, r in results.items()
        ]
        print()
        print(
            bu.table(
                [
                    "mode",
                    "on-the-fly clips/s",
                    "loader clips/s",
                    f"Ray Data clips/s ({cpus} CPUs)",
                    "loader/fly",
                    f"ray/(fly x {cpus})",
                    "target",
                ],
                rows,
                title=f"training clips/s, storage frames {VARIANTS[0][0]} + flow {VARIANTS[0][1]} "
                "(on-the-fly and loader: 1 process, 1 thread)",
            )
        )
        print(f"bench/loader: {bu.load()} (after)")
        for mode, r in results.items():
            target = TARGETS[mode]
            ratio = r["in_process"] / r["fly"]
            print(
                f"ratio {mode} loader(in-process)/on-the-fly = {ratio:.2f} "
                f"(target >= {target:g}) {bu.verdict(ratio, target)}"
            )
            ratio = r["ray"] / (r["fly"] * cpus)
            print(
                f"ratio {mode} loader(Ray Data)/(on-the-fly x {cpus} CPUs) = {ratio:.2f} "
                f"(target >= {target:g}) {bu.verdict(ratio, target)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
