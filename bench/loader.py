"""Benchmark: training clips/s from the Parquet shards against decoding videos on the fly.

A generated motion dataset (default 48 videos of 64 frames at 10 fps, 192x144) is
ingested once per storage variant (fps 10, short side 128, windows of 32 frames,
DIS flow), then training clips of the ``train`` split are produced three ways:

- **loader, in-process**: ``vidray.data.reading.iter_clip_batches`` (pyarrow batches
  of 32 windows through ``ClipSampler``), in this process, one thread;
- **loader, Ray Data**: ``read_clips(...).iter_batches(batch_size=32)`` on a local
  Ray with ``--cpus`` CPUs (one untimed warm-up epoch first);
- **on the fly**: the same clips decoded straight from the videos in this process,
  one thread, through vidray's own decoder: ``vidray.data.decode.iter_frames``
  from the clip's first frame (seeking to the keyframe before it) at the stored
  fps and short side, every stride-th frame kept, random crop and flip; for
  rgb+flow also the L+1 frames under the clip's flow stack, their flow with the
  same backend (DIS) at stored size, quantized to uint8, cropped and flipped like
  the loader's. Whatever makes vidray's decoding faster speeds up this baseline too.

Modes: ``rgb`` (T=8, stride 2, crop 112) and ``rgb+flow`` (the same plus L=10
flow fields). Each measurement runs whole epochs until ``--min-seconds`` pass.

Ray Data is measured twice: on the dataset as it is (a small epoch, where the
per-epoch start-up shows) and on a dataset whose manifest lists every shard
``--copies`` times (symlinks; a bigger epoch, closer to steady state). The
official Ray ratio uses the bigger epoch.

How to read the ratios::

    loader(in-process) / on-the-fly           both one process, one thread
    loader(Ray Data) / (on-the-fly x CPUs)    Ray's clips/s per CPU against one process

Targets: >= 3 for rgb, >= 10 for rgb+flow. A ratio says how much cheaper reading a
stored clip is than making it from the video; the Ray Data ratio also pays Ray
Data's per-epoch start-up and per-batch overhead. Every method also reports
CPU-ms per clip (this process tree, Ray's processes included), and the "CPU:"
ratio columns compare those: unlike clips/s they do not move with other users'
load on a shared machine.

The codec table compares the storage variants, frames raw|jpeg x flow raw|jpeg:
bytes on disk per window (the whole shard, and the frames and flow columns
alone, zstd-1 compressed as written) and in-process loader clips/s in both modes.

    PYTHONPATH=. python bench/loader.py            # default sizes (~1 min on 2 cores)
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
from vidray.data.flow import load_flow_estimator, quantize_flow
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_manifest, window_files, write_manifest
from vidray.data.reading import iter_clip_batches, read_clips
from vidray.data.shards import read_windows

TARGETS = {"rgb": 3.0, "rgb+flow": 10.0}
SPLIT = "train"
BATCH = 32
# (frames codec, flow codec); the first is the ingest default and the main comparison.
VARIANTS = [("jpeg", "raw"), ("raw", "raw"), ("jpeg", "jpeg"), ("raw", "jpeg")]
METHODS = {
    "fly": "on-the-fly: decode.iter_frames (+ DIS flow)",
    "loader": "loader in-process: iter_clip_batches",
    "ray": "loader Ray Data: read_clips().iter_batches()",
    "ray_big": "  same, shards x{copies} (a {copies}x bigger epoch)",
}


def measure(
    epoch: Callable[[], Iterable[dict[str, np.ndarray]]], min_seconds: float
) -> tuple[float, float, float]:
    """(clips/s, seconds/epoch, CPU-ms/clip) over whole epochs, for at least `min_seconds`.

    CPU time is that of this process tree (this process, and Ray's when it runs
    here), so other users' load does not move it.
    """
    clips = epochs = 0
    meter = bu.CpuMeter()
    meter.start()
    t0 = time.perf_counter()
    while True:
        for batch in epoch():
            clips += len(batch["label"])
        epochs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            cpu = sum(meter.stop().values())
            return clips / elapsed, elapsed / epochs, 1000 * cpu / clips


class OnTheFly:
    """Training clips decoded from the source videos, as a loader without shards would.

    Uses the windows' positions from the shards only to pick the same kind of
    clips (same videos, same window starts, random offset, crop and flip).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        clip: ClipConfig,
        flow_L: int,
        dis_preset: str = "fast",
        seed: int = 0,
    ) -> None:
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
        self.estimator = load_flow_estimator("dis", dis_preset=dis_preset) if flow_L else None

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
        t0, short = row["start_sec"] + lo / fps, min(height, width)
        frames_at = decode.iter_frames(
            row["path"], fps=fps, short_side=short, start_sec=t0, threads=1
        )
        decoded = list(itertools.islice(frames_at, hi - lo))
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


def replicate(data: Path, copies: int, dst: Path) -> Path:
    """An ingest output whose windows/ links every shard of `data` `copies` times."""
    (dst / "windows").mkdir(parents=True, exist_ok=True)
    (dst / "dataset.yaml").write_bytes((data / "dataset.yaml").read_bytes())
    rows = read_manifest(data)
    for row in rows:
        linked = []
        for shard in row["shards"]:
            for i in range(copies):
                link = dst / "windows" / f"{i:03d}-{shard}"
                if not link.exists():
                    link.symlink_to(data / "windows" / shard)
                linked.append(link.name)
        row["shards"] = linked
    write_manifest(dst, rows)
    return dst


def ray_loader(
    data: Path, *, clip: ClipConfig, flow_L: int, min_seconds: float, warm_up: bool
) -> tuple[float, float, float]:
    """read_clips(...).iter_batches: an optional untimed warm-up epoch, then `measure`."""
    ds = read_clips(data, split=SPLIT, clip=clip, flow_L=flow_L, train=True)
    if warm_up:  # worker start-up and imports
        for _ in ds.iter_batches(batch_size=BATCH):
            pass
    return measure(lambda: ds.iter_batches(batch_size=BATCH), min_seconds)


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
    parser.add_argument(
        "--dis-preset",
        default="fast",
        choices=["ultrafast", "fast", "medium"],
        help="DIS preset, for ingest and on-the-fly flow alike (flow.dis_preset)",
    )
    parser.add_argument(
        "--copies", type=int, default=8, help="shard copies for the bigger Ray Data epoch"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.min_seconds = min(args.videos, 8), 0.5
    cpus = bu.cpu_count(args.cpus)
    bu.single_thread_opencv()
    clip = ClipConfig(T=args.T, stride=args.stride, crop=args.crop)
    modes = {"rgb": 0, "rgb+flow": args.L}

    print(f"bench/loader: {bu.load()} (before)")
    tag = bu.dataset_tag(args.videos, args.frames, args.video_fps, args.size)
    with bu.workdir(args.workdir) as work:
        videos = work / f"videos_{tag}"
        t_gen, paths = bu.timed(
            lambda: bu.make_videos(
                videos,
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
            f"clips: T={clip.T} stride={clip.stride} crop={clip.crop}, L={args.L} in rgb+flow "
            f"(DIS {args.dis_preset}); "
            f"split={SPLIT}, batches of {BATCH}"
        )
        t_init = bu.start_ray(cpus)
        warm = bu.copy_subset(paths[:2], videos, work / "warm_videos")
        run_ingest(bu.ingest_config(warm, work / "warm_out"), log=lambda _: None)
        print(f"ray: local, {cpus} CPUs (ray.init {t_init:.1f} s and a warm-up ingest, untimed)")

        # --- ingest each storage variant once
        dirs: dict[tuple[str, str], Path] = {}
        codec_rows: list[list[Any]] = []
        in_process: dict[tuple[str, str, int], tuple[float, float, float]] = {}
        for frames_codec, flow_codec in VARIANTS:
            out = work / f"data_{tag}_{frames_codec}_{flow_codec}_{args.dis_preset}"
            cfg = bu.ingest_config(
                videos,
                out,
                [
                    f"ingest.frames_codec={frames_codec}",
                    f"flow.codec={flow_codec}",
                    f"flow.dis_preset={args.dis_preset}",
                ],
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
                result = measure(
                    lambda out=out, flow_L=flow_L: iter_clip_batches(
                        out, split=SPLIT, clip=clip, flow_L=flow_L, train=True, batch_rows=BATCH
                    ),
                    args.min_seconds,
                )
                in_process[frames_codec, flow_codec, flow_L] = result
                row.append(result[0])
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
        big = replicate(data, args.copies, work / f"data_{tag}_x{args.copies}")
        methods: dict[str, dict[str, tuple[float, float, float]]] = {k: {} for k in METHODS}
        for mode, flow_L in modes.items():
            kwargs: dict[str, Any] = dict(clip=clip, flow_L=flow_L, min_seconds=args.min_seconds)
            methods["fly"][mode] = measure(
                OnTheFly(data, clip=clip, flow_L=flow_L, dis_preset=args.dis_preset).epoch,
                args.min_seconds,
            )
            methods["loader"][mode] = in_process[(*VARIANTS[0], flow_L)]
            methods["ray"][mode] = ray_loader(data, warm_up=True, **kwargs)
            methods["ray_big"][mode] = ray_loader(big, warm_up=False, **kwargs)
        rows = []
        for key, label in METHODS.items():
            procs = cpus if key.startswith("ray") else 1
            row: list[Any] = [label.format(copies=args.copies), procs]
            for mode in modes:
                row += list(methods[key][mode])
            rows.append(row)
        headers = ["method", "CPUs"]
        for mode in modes:
            headers += [f"{mode} clips/s", "s/epoch", "CPU-ms/clip"]
        print()
        print(
            bu.table(
                headers,
                rows,
                title=f"training clips/s ({len(OnTheFly(data, clip=clip, flow_L=0).windows)} "
                f"{SPLIT} clips per epoch; storage frames {VARIANTS[0][0]} + flow "
                f"{VARIANTS[0][1]})",
            )
        )

        def rate(key: str, mode: str) -> float:
            return methods[key][mode][0]

        def cpu_ms(key: str, mode: str) -> float:
            return methods[key][mode][2]

        # (column header, numerator method, denominator method, denominator x CPUs)
        ratio_defs = [
            ("loader/fly", "loader", "fly", 1),
            (f"ray/(fly x {cpus})", "ray", "fly", cpus),
            (f"ray x{args.copies}/(fly x {cpus})", "ray_big", "fly", cpus),
        ]
        ratio_rows = [
            [
                mode,
                *(
                    f"{rate(num, mode) / (rate(den, mode) * n):.2f}"
                    for _, num, den, n in ratio_defs
                ),
                f"{cpu_ms('fly', mode) / cpu_ms('loader', mode):.2f}",
                f"{cpu_ms('fly', mode) / cpu_ms('ray_big', mode):.2f}",
                f">= {TARGETS[mode]:g}",
            ]
            for mode in modes
        ]
        print()
        print(
            bu.table(
                [
                    "mode",
                    *(d[0] for d in ratio_defs),
                    "CPU: fly/loader",
                    f"CPU: fly/ray x{args.copies}",
                    "target",
                ],
                ratio_rows,
                title="ratios of clips/s (fly = on-the-fly decoding as vidray decodes today); "
                "CPU: ratios of CPU-ms per clip, which other users' load does not move",
            )
        )
        print(f"bench/loader: {bu.load()} (after)")
        for mode in modes:
            target, fly = TARGETS[mode], rate("fly", mode)
            ratio = rate("loader", mode) / fly
            print(
                f"ratio {mode} loader(in-process)/on-the-fly = {ratio:.2f} "
                f"(target >= {target:g}) {bu.verdict(ratio, target)}"
            )
            ratio = rate("ray_big", mode) / (fly * cpus)
            print(
                f"ratio {mode} loader(Ray Data, x{args.copies} epoch)/(on-the-fly x {cpus} CPUs) "
                f"= {ratio:.2f} (target >= {target:g}) {bu.verdict(ratio, target)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
