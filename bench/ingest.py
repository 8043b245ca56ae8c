"""Benchmark: Ray Data ingest throughput against the same work in one plain process.

What is measured, on generated motion datasets (192x144, 10 fps):

- the **main** dataset, default 48 videos of 320 frames (10 windows each), long
  enough that the ratio measures steady-state throughput rather than Ray Data's
  fixed cost per execution (about a second);
- a **short** dataset, default 48 videos of 64 frames (2 windows each, like a
  UCF101 clip), where that fixed cost shows; ``--short-frames 0`` skips it.

On each, two sides:

- **ray**: windows/s of ``vidray.data.ingest.run_ingest(cfg)`` on a local Ray with
  ``--cpus`` CPUs (default: all cores). The clock runs around the whole call:
  listing, the probe stage, planning, the segment stage (decode -> DIS flow ->
  encode -> write shard, segments packed into tasks), manifest and dataset.yaml.
  ``ray.init`` is not timed, and a warm-up ingest of two videos into a scratch
  dir runs first, so worker start-up is not measured either.
- **single**: windows/s of the same stage functions called sequentially in this
  process (``list_sources`` -> ``probe_entry`` -> ``plan_segments`` ->
  ``ingest_segment``, which writes the same shards), with one OpenCV thread and
  one decode thread, exactly what each Ray task gets with ``cpus_per_task=1``.

Both sides use the same storage parameters (fps 10, short side 128, windows of 32
frames at stride 32, JPEG frames, DIS flow stored raw) and are run ``--repeats``
times, in turn; the best run of each side counts.

How to read the ratio::

    ratio ingest/(single-process x CPUs) = ray_windows_per_s / (single_windows_per_s x CPUs)

1.0 means Ray scales perfectly over the CPUs it was given; what is missing is
Ray Data overhead (task launch, scheduling, the driver's own CPU use, stage
barriers) plus contention with anything else on the machine (the load averages
are printed before and after). Target: >= 0.8, on the main dataset.

Wall time moves with other users' load; CPU time does not. Every run also
reports the CPU seconds (user+sys) of this process tree by role (driver, Ray
workers, raylet+gcs, other Ray processes), so the ratio splits into two factors
that can be read on a busy machine too: work efficiency (single-process CPU-s /
Ray CPU-s: how much CPU Ray adds) times utilization (Ray CPU-s / (wall x CPUs):
how busy Ray keeps its CPUs).

A last table says where the time goes: the per-window cost of each stage of
``ingest_segment`` in one process.

    PYTHONPATH=. python bench/ingest.py            # default sizes (~1.5-2 min on 2 cores)
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

TARGET = 0.8
SIDES = ("single", "ray")


def single_process_ingest(cfg: Config) -> dict[str, Any]:
    """run_ingest's stage functions, sequentially in this process; same shards out."""
    ingest, flow = cfg.ingest, cfg.flow
    output = Path(ingest.output)
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    t0 = time.perf_counter()
    listing = list_sources(
        ingest.input, layout=ingest.layout, split=ingest.split, val_fraction=ingest.val_fraction
    )
    windows = nbytes = segments = 0
    for entry in map(source_entry, listing.entries):
        probed = probe_entry(entry)
        if probed["error"]:
            continue
        for segment in plan_segments(probed, ingest):
            result = ingest_segment(segment, ingest=ingest, flow=flow, output=str(output))
            windows += result["n_windows"]
            nbytes += result["bytes"]
            segments += 1
    seconds = time.perf_counter() - t0
    return dict(seconds=seconds, windows=windows, bytes=nbytes, segments=segments)


def ray_ingest(cfg: Config) -> dict[str, Any]:
    shutil.rmtree(cfg.ingest.output, ignore_errors=True)
    seconds, summary = bu.timed(lambda: run_ingest(cfg, log=lambda _: None))
    return dict(seconds=seconds, windows=summary.windows, bytes=summary.bytes)


def compare(
    name: str, videos: Path, out: Path, *, cpus: int, repeats: int
) -> tuple[list[list[Any]], dict[str, dict[str, Any]], dict[str, float]]:
    """Run single and ray `repeats` times in turn on `videos`.

    Returns the table rows, the best (fastest) run of each side, and each side's
    least CPU-s over its runs.
    """
    configs = {side: bu.ingest_config(videos, out / side) for side in SIDES}
    runners = {"single": single_process_ingest, "ray": ray_ingest}
    rows: list[list[Any]] = []
    best: dict[str, dict[str, Any]] = {}
    min_cpu: dict[str, float] = {}
    meter = bu.CpuMeter()
    for r in range(repeats):
        for side in SIDES:
            meter.start()
            result = runners[side](configs[side])
            cpu = meter.stop()
            result["cpu_s"] = sum(cpu.values())
            result["rate"] = result["windows"] / result["seconds"]
            rows.append(
                [
                    f"{name} {side} #{r + 1}",
                    cpus if side == "ray" else 1,
                    result["windows"],
                    result["seconds"],
                    result["rate"],
                    result["bytes"] / max(1, result["windows"]) / 1e3,
                    result["cpu_s"],
                    *(cpu[role] for role in bu.CPU_ROLES),
                ]
            )
            if side not in best or result["rate"] > best[side]["rate"]:
                best[side] = result
            min_cpu[side] = min(min_cpu.get(side, float("inf")), result["cpu_s"])
    return rows, best, min_cpu


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
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument(
        "--profile-videos", type=int, default=12, help="videos in the stage breakdown"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the stage breakdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.frames, args.repeats, args.profile_videos = min(args.videos, 8), 96, 1, 2
    cpus = bu.cpu_count(args.cpus)
    bu.single_thread_opencv()
    datasets = {"main": args.frames}
    if args.short_frames:
        datasets["short"] = args.short_frames
    width, height = args.size

    print(f"bench/ingest: {bu.load()} (before)")
    with bu.workdir(args.workdir) as work:
        inputs: dict[str, Path] = {}
        for name, frames in datasets.items():
            root = work / f"videos_{bu.dataset_tag(args.videos, frames, args.video_fps, args.size)}"
            t_gen, paths = bu.timed(
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
                f"dataset {name}: {len(paths)} videos x {frames} frames at "
                f"{args.video_fps:g} fps, {width}x{height}, {per_video} windows/video "
                f"(generated in {t_gen:.1f} s)"
            )
            if name == "main":
                main_paths = paths
        storage = ", ".join(o.split(".", 1)[1] for o in bu.STORAGE_OVERRIDES)
        print(f"storage (both sides): {storage}")

        t_init = bu.start_ray(cpus)
        warm_input = bu.copy_subset(main_paths[:2], inputs["main"], work / "warm_videos")
        t_warm, _ = bu.timed(lambda: ray_ingest(bu.ingest_config(warm_input, work / "warm_out")))
        print(
            f"ray: local, {cpus} CPUs; ray.init {t_init:.1f} s and warm-up ingest of 2 videos "
            f"{t_warm:.1f} s, neither timed"
        )

        runs: list[list[Any]] = []
        best: dict[str, dict[str, dict[str, Any]]] = {}
        min_cpu: dict[str, dict[str, float]] = {}
        for name in datasets:
            rows, best[name], min_cpu[name] = compare(
                name, inputs[name], work / f"out_{name}", cpus=cpus, repeats=args.repeats
            )
            runs += rows
        print()
        print(
            bu.table(
                [
                    "run",
                    "CPUs",
                    "windows",
                    "seconds",
                    "windows/s",
                    "kB/window",
                    "CPU-s",
                    *(f"{role} CPU-s" for role in bu.CPU_ROLES),
                ],
                runs,
                title="ingest runs (best of each side counts; ray = run_ingest; CPU-s: "
                "user+sys of this process tree, so other users' load does not count)",
            )
        )
        for name in datasets:
            b, cpu = best[name], min_cpu[name]
            if b["single"]["windows"] != b["ray"]["windows"]:
                print(
                    f"WARNING ({name}): window counts differ: single {b['single']['windows']}, "
                    f"ray {b['ray']['windows']}"
                )
            utilization = b["ray"]["cpu_s"] / (b["ray"]["seconds"] * cpus)
            ideal = b["single"]["seconds"] / cpus
            print(
                f"{name}: ideal ray time {ideal:.2f} s, best {b['ray']['seconds']:.2f} s "
                f"(+{b['ray']['seconds'] - ideal:.2f} s); the work takes {cpu['single']:.2f} "
                f"CPU-s in one process and {cpu['ray']:.2f} CPU-s under Ray (min over runs): "
                f"work efficiency {cpu['single'] / cpu['ray']:.2f}; the best run kept its "
                f"{cpus} CPUs {100 * utilization:.0f}% busy (ratio ~ efficiency x utilization)"
            )

        if not args.no_profile:
            scratch = work / "profile"
            shutil.rmtree(scratch, ignore_errors=True)
            subset = main_paths[: args.profile_videos]
            cfg = bu.ingest_config(inputs["main"], work / "out_profile")
            stages, probe_ms = stage_breakdown(cfg, subset, scratch)
            print()
            print(
                bu.table(
                    ["stage", "ms/window", "share"],
                    stages,
                    title=f"single-process stage costs ({len(subset)} main videos, 1 thread; "
                    f"probe: {probe_ms:.1f} ms/video)",
                )
            )

        print()
        print(f"bench/ingest: {bu.load()} (after)")
        for name, frames in datasets.items():
            b = best[name]
            ratio = b["ray"]["rate"] / (b["single"]["rate"] * cpus)
            print(
                f"ratio ingest/(single-process x CPUs), {name} ({args.videos} videos x "
                f"{frames} frames; single {b['single']['rate']:.1f} windows/s, ray "
                f"{b['ray']['rate']:.1f} windows/s on {cpus} CPUs) = {ratio:.2f} "
                f"(target >= {TARGET}) {bu.verdict(ratio, TARGET)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
