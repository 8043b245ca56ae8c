"""Benchmark: Ray Data ingest against K plain processes doing the same work at once.

What is measured, on generated motion datasets (192x144, 10 fps):

- the **long** dataset, default 48 videos of 320 frames (10 windows each);
- the **short** dataset, default 48 videos of 64 frames (2 windows each, like a
  UCF101 clip), where Ray Data's fixed cost per execution shows;
  ``--short-frames 0`` skips it.

On each, two sides run in turn ``--repeats`` times (default 3; all printed, the
median counts):

- **ray**: ``vidray.data.ingest.run_ingest(cfg)`` on a local Ray with ``--cpus``
  CPUs (default: all cores). The clock runs around the whole call: listing, the
  probe stage, planning, the segment stage (decode -> DIS flow -> encode -> write
  shard), manifest and dataset.yaml. ``ray.init`` and a warm-up ingest of two videos
  are not timed. Slot use comes from the task timeline (``ray.timeline()``): the
  busy time of Ray Data's map tasks / (CPUs x the call's wall time).
- **ceiling**: K plain processes (multiprocessing, spawn; K = the CPUs Ray has),
  each running the same stage functions (``source_entry`` -> ``probe_entry`` ->
  ``plan_segments`` -> ``ingest_segment``, which writes shards) sequentially on
  1/K of the videos, all at the same time, one OpenCV and one decode thread each,
  as a Ray task gets with ``cpus_per_task=1``. On a shared machine that is what K
  cores really give; one process x K is not a ceiling any code reaches.

Both sides use the same storage parameters (fps 10, short side 128, windows of 32
frames at stride 32, JPEG frames, DIS flow stored raw).

    ratio = ray windows/s / ceiling windows/s          target >= 0.9, both datasets

CPU time (user+sys of this process tree, by role: driver, workers, Ray daemons)
does not move with other users' load: the ratio splits into work efficiency
(ceiling CPU-s / Ray CPU-s: what Ray adds) times how busy each side keeps its CPUs.

A last table says where the time goes: the per-window cost of each stage of
ingesting a window in one process.

    PYTHONPATH=. python bench/ingest.py            # default sizes (~3 min on 2 cores)
    PYTHONPATH=. python bench/ingest.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import benchutil as bu

from vidray.config import Config
from vidray.data import decode
from vidray.data.ingest import run_ingest
from vidray.data.segments import ingest_segment, plan_segments, probe_entry, source_entry
from vidray.data.shards import ShardWriter, encode_images
from vidray.data.sources import list_sources

TARGET = 0.9


def ceiling_share(share: tuple[Config, int, int]) -> int:
    """One ceiling process's work: run_ingest's stage functions on every k-th video
    (from the ``index``-th), sequentially; the windows it wrote."""
    cfg, index, k = share
    ingest, flow = cfg.ingest, cfg.flow
    listing = list_sources(
        ingest.input, layout=ingest.layout, split=ingest.split, val_fraction=ingest.val_fraction
    )
    windows = 0
    for entry in map(source_entry, listing.entries[index::k]):
        probed = probe_entry(entry)
        if probed["error"]:
            continue
        for segment in plan_segments(probed, ingest):
            record = ingest_segment(segment, ingest=ingest, flow=flow, output=ingest.output)
            windows += record["n_windows"]
    return windows


def ceiling_run(pool: Any, cfg: Config, k: int) -> bu.Run:
    output = Path(cfg.ingest.output)
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    return bu.run_ceiling(pool, ceiling_share, [(cfg, i, k) for i in range(k)])


def ray_run(cfg: Config) -> tuple[bu.Run, tuple[float, float]]:
    """One timed run_ingest from scratch, and its wall-clock window (for slot use)."""
    shutil.rmtree(cfg.ingest.output, ignore_errors=True)
    meter = bu.CpuMeter()
    meter.start()
    start = time.time()
    seconds, summary = bu.timed(lambda: run_ingest(cfg, log=lambda _: None))
    run = bu.Run(units=summary.windows, seconds=seconds, cpu=meter.stop())
    return run, (start, time.time())


def compare(
    videos: Path, out: Path, pool: Any, *, cpus: int, repeats: int
) -> tuple[list[bu.Run], list[bu.Run]]:
    """The ceiling and run_ingest on `videos`, ``repeats`` times each, in turn so both
    see the same load; the Ray runs get their slot use."""
    ceiling_cfg = bu.ingest_config(videos, out / "ceiling")
    ray_cfg = bu.ingest_config(videos, out / "ray")
    ceiling, ray_runs, windows = [], [], []
    for _ in range(repeats):
        ceiling.append(ceiling_run(pool, ceiling_cfg, cpus))
        run, window = ray_run(ray_cfg)
        ray_runs.append(run)
        windows.append(window)
    for run, used in zip(ray_runs, bu.slot_use(windows, cpus), strict=True):
        run.slot_use = used
    return ceiling, ray_runs


def stage_breakdown(cfg: Config, paths: list[Path], scratch: Path) -> tuple[list[list[Any]], float]:
    """Per-window milliseconds of each step of ingest_segment, in this process.

    Returns the table rows and the probe cost in ms per video.
    """
    from vidray.data.flow import load_flow_estimator, quantize_flow

    ingest, flow = cfg.ingest, cfg.flow
    estimator = load_flow_estimator(flow.backend, dis_preset=flow.dis_preset)
    cost = dict.fromkeys(
        ["probe", "decode", "flow", "quantize", "enc_frames", "enc_flow", "write"], 0.0
    )
    windows = 0
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        decode.probe(path)
        t1 = time.perf_counter()
        got = list(
            decode.iter_windows(
                path,
                fps=ingest.fps,
                short_side=ingest.short_side,
                window_frames=ingest.window_frames,
                window_stride=ingest.window_stride,
                threads=ingest.decode_threads,
            )
        )
        t2 = time.perf_counter()
        cost["probe"] += t1 - t0
        cost["decode"] += t2 - t1
        writer = ShardWriter(scratch / f"{i}.parquet", tmp_dir=scratch / "_tmp")
        for window in got:
            windows += 1
            t0 = time.perf_counter()
            fields = estimator(window.frames)
            t1 = time.perf_counter()
            quantized = quantize_flow(fields, flow.bound)
            t2 = time.perf_counter()
            frames = encode_images(window.frames, codec=ingest.frames_codec)
            t3 = time.perf_counter()
            flows = encode_images(quantized, codec=flow.codec)
            t4 = time.perf_counter()
            writer.add(_row(window, frames, flows, cfg))
            t5 = time.perf_counter()
            for key, seconds in zip(
                ["flow", "quantize", "enc_frames", "enc_flow", "write"],
                [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4],
                strict=True,
            ):
                cost[key] += seconds
        t0 = time.perf_counter()
        writer.commit()
        cost["write"] += time.perf_counter() - t0
    labels = {
        "probe": "probe (decode.probe)",
        "decode": "decode + RGB + resize (decode.iter_windows)",
        "flow": f"flow ({flow.backend}, preset {flow.dis_preset})",
        "quantize": "quantize flow",
        "enc_frames": f"encode frames ({ingest.frames_codec})",
        "enc_flow": f"encode flow ({flow.codec})",
        "write": "Parquet write (ShardWriter)",
    }
    total = sum(cost.values())
    rows = [[labels[k], 1000 * v / windows, f"{100 * v / total:.0f}%"] for k, v in cost.items()]
    rows.append(["total", 1000 * total / windows, "100%"])
    return rows, 1000 * cost["probe"] / len(paths)


def _row(window: Any, frames: list[bytes], flows: list[bytes], cfg: Config) -> dict[str, Any]:
    return {
        "video_id": "v",
        "video_key": 0,
        "label": 0,
        "label_name": "c",
        "split": "train",
        "window_idx": window.index,
        "start_sec": window.start_sec,
        "fps": cfg.ingest.fps,
        "height": window.frames.shape[1],
        "width": window.frames.shape[2],
        "padded": window.padded,
        "frames_codec": cfg.ingest.frames_codec,
        "frames": frames,
        "flow_codec": cfg.flow.codec,
        "flow": flows,
        "flow_bound": cfg.flow.bound,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bu.add_dataset_args(parser, frames=320)
    parser.add_argument(
        "--short-frames",
        type=int,
        default=64,
        help="frames per video of the short dataset (same --videos; 0 = skip it)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, in turn")
    parser.add_argument(
        "--profile-videos", type=int, default=12, help="videos in the stage breakdown"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the stage breakdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.frames, args.profile_videos = min(args.videos, 8), 96, 2
    cpus = bu.cpu_count(args.cpus)
    bu.single_thread_opencv()
    datasets = {"long": args.frames}
    if args.short_frames:
        datasets["short"] = args.short_frames
    width, height = args.size

    print(f"bench/ingest: {bu.load()} (before)")
    with bu.workdir(args.workdir) as work:
        inputs: dict[str, Path] = {}
        paths: dict[str, list[Path]] = {}
        for name, frames in datasets.items():
            root = work / f"videos_{bu.dataset_tag(args.videos, frames, args.video_fps, args.size)}"
            t_gen, paths[name] = bu.timed(
                lambda root=root, frames=frames: bu.make_videos(
                    root, videos=args.videos, frames=frames, fps=args.video_fps, size=args.size
                )
            )
            inputs[name] = root
            ingest = bu.ingest_config(root, work / "unused").ingest
            per_video = decode.count_windows(
                decode.grid_frame_count(frames / args.video_fps, ingest.fps),
                window_frames=ingest.window_frames,
                window_stride=ingest.window_stride,
            )
            print(
                f"dataset {name}: {len(paths[name])} videos x {frames} frames at "
                f"{args.video_fps:g} fps, {width}x{height}, {per_video} windows/video "
                f"(generated in {t_gen:.1f} s)"
            )
        storage = ", ".join(o.split(".", 1)[1] for o in bu.STORAGE_OVERRIDES)
        print(f"storage (both sides): {storage}")

        t_init = bu.start_ray(cpus)
        warm_input = bu.copy_subset(paths["long"][:2], inputs["long"], work / "warm_videos")
        t_warm, _ = bu.timed(lambda: ray_run(bu.ingest_config(warm_input, work / "warm_out")))
        print(
            f"ray: local, {cpus} CPUs; ray.init {t_init:.1f} s and warm-up ingest of 2 videos "
            f"{t_warm:.1f} s, neither timed; ceiling: {cpus} processes"
        )
        results: dict[str, tuple[list[bu.Run], list[bu.Run]]] = {}
        with bu.ceiling_pool(cpus) as pool:
            warm_cfg = bu.ingest_config(warm_input, work / "warm_ceiling")
            bu.warm_ceiling(pool, ceiling_share, (warm_cfg, 0, cpus), cpus)
            for name in datasets:
                results[name] = compare(
                    inputs[name], work / f"out_{name}", pool, cpus=cpus, repeats=args.repeats
                )
        lines = [report(name, *results[name], cpus=cpus) for name in datasets]

        if not args.no_profile:
            scratch = work / "profile"
            shutil.rmtree(scratch, ignore_errors=True)
            subset = paths["long"][: args.profile_videos]
            cfg = bu.ingest_config(inputs["long"], work / "out_profile")
            stages, probe_ms = stage_breakdown(cfg, subset, scratch)
            print()
            print(
                bu.table(
                    ["stage", "ms/window", "share"],
                    stages,
                    title=f"single-process stage costs ({len(subset)} long videos, 1 thread; "
                    f"probe: {probe_ms:.1f} ms/video)",
                )
            )

    print()
    print(f"bench/ingest: {bu.load()} (after)")
    for line in lines:
        print(line)
    return 0


def report(name: str, ceiling: list[bu.Run], ray_runs: list[bu.Run], *, cpus: int) -> str:
    """Prints one dataset's runs and what they say; returns its target line."""
    print()
    print(
        bu.table(
            bu.RUN_HEADERS,
            bu.run_rows(f"{name} ceiling: {cpus} processes", ceiling, cpus)
            + bu.run_rows(f"{name} ray: run_ingest", ray_runs, cpus),
            title=f"ingest, {name} dataset (units = windows); CPU-ms per window by role",
        )
    )
    ceil, ray = bu.median_run(ceiling), bu.median_run(ray_runs)
    if ceil.units != ray.units:
        print(f"WARNING ({name}): window counts differ: ceiling {ceil.units}, ray {ray.units}")
    print(
        f"{name}: median ceiling {ceil.seconds:.2f} s, ray {ray.seconds:.2f} s; work "
        f"efficiency (ceiling CPU / ray CPU per window) {ceil.cpu_ms() / ray.cpu_ms():.2f}; "
        f"busy: ceiling {100 * sum(ceil.cpu.values()) / (ceil.seconds * cpus):.0f}%, ray "
        f"{100 * sum(ray.cpu.values()) / (ray.seconds * cpus):.0f}% of {cpus} CPUs; ray "
        f"slot use (map tasks) {100 * (ray.slot_use or 0):.0f}%"
    )
    return bu.target_line(
        f"ingest {name} ray/{cpus}-process ceiling ({ceil.units} windows; ceiling "
        f"{ceil.rate:.1f}, ray {ray.rate:.1f} windows/s)",
        ray.rate / ceil.rate,
        TARGET,
    )


if __name__ == "__main__":
    sys.exit(main())
