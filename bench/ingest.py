"""Benchmark: Ray Data ingest throughput against the same work in one plain process.

What is measured, on a generated motion dataset (default 48 videos of 64 frames at
10 fps, 192x144):

- **ray**: windows/s of ``vidray.data.ingest.run_ingest(cfg)`` on a local Ray with
  ``--cpus`` CPUs (default: all cores). The clock runs around the whole call:
  listing, the probe stage, planning, the segment stage (decode -> DIS flow ->
  encode -> write shard), manifest and dataset.yaml. ``ray.init`` is not timed,
  and a warm-up ingest of two videos into a scratch dir runs first, so worker
  start-up is not measured either.
- **single**: windows/s of the same stage functions called sequentially in this
  process (``list_sources`` -> ``probe_entry`` -> ``plan_segments`` ->
  ``ingest_segment``, which writes the same shards), with one OpenCV thread and
  one decode thread, exactly what each Ray task gets with ``cpus_per_task=1``.

- **packed** [a proposal, not vidray today]: the same stage functions on the
  same Ray in fewer, bigger tasks (probing in ~2 tasks per CPU, short segments
  packed into tasks of up to ``segment_windows`` windows); its ratio is printed
  apart, so the lead can weigh the change.

All sides use the same storage parameters (fps 10, short side 128, windows of 32
frames at stride 32, JPEG frames, DIS flow stored raw) and are run ``--repeats``
times, in turn; the best run of each side counts.

How to read the ratio::

    ratio ingest/(single-process x CPUs) = ray_windows_per_s / (single_windows_per_s x CPUs)

1.0 means Ray scales perfectly over the CPUs it was given; what is missing is
Ray Data overhead (task launch, scheduling, the driver's own CPU use, stage
barriers) plus contention with anything else on the machine (the load averages
are printed before and after). Target: >= 0.8.

Wall time moves with other users' load; CPU time does not. Every run also
reports the CPU seconds (user+sys) of this process tree by role (driver, Ray
workers, raylet+gcs, other Ray processes), so the ratio splits into two factors
that can be read on a busy machine too: work efficiency (single-process CPU-s /
Ray CPU-s: how much CPU Ray adds) times utilization (Ray CPU-s / (wall x CPUs):
how busy Ray keeps its CPUs).

Two further tables say where the time goes: the per-window cost of each stage in
one process (including decode with one shared PyAV reformatter, a proposed fix),
and Ray Data's fixed and per-task overhead (a no-op pipeline of the same shape).

    PYTHONPATH=. python bench/ingest.py            # default sizes (~1-2 min on 2 cores)
    PYTHONPATH=. python bench/ingest.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import benchutil as bu

from vidray.config import Config
from vidray.data import decode
from vidray.data.ingest import ingest_segment, plan_segments, probe_entry, run_ingest
from vidray.data.shards import ShardWriter, encode_images
from vidray.data.sources import list_sources

TARGET = 0.8


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
    for entry in map(asdict, listing.entries):
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


def ray_packed_ingest(cfg: Config) -> dict[str, Any]:
    """A proposed run_ingest pipeline: the same stage functions in fewer, bigger tasks.

    Probing runs as about 2 tasks per CPU instead of one per file, and short
    segments are packed into tasks of up to ``segment_windows`` windows (still
    one shard per segment, so atomicity is unchanged; long videos still split).
    The manifest is not written (a few ms).
    """
    import ray

    ingest, flow = cfg.ingest, cfg.flow
    output = Path(ingest.output)
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    t0 = time.perf_counter()
    listing = list_sources(
        ingest.input, layout=ingest.layout, split=ingest.split, val_fraction=ingest.val_fraction
    )
    entries = [asdict(e) for e in listing.entries]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    probed = (
        ray.data.from_items(entries, override_num_blocks=min(len(entries), 2 * cpus))
        .map(probe_entry)
        .take_all()
    )
    tasks: list[dict[str, Any]] = []
    packed: list[dict[str, Any]] = []
    size = 0
    for item in probed:
        for segment in [] if item["error"] else plan_segments(item, ingest):
            n = _expected_windows(segment, ingest)
            if packed and size + n > ingest.segment_windows:
                tasks.append({"segments": packed})
                packed, size = [], 0
            packed.append(segment)
            size += n
    if packed:
        tasks.append({"segments": packed})

    def run(task: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            ingest_segment(segment, ingest=ingest, flow=flow, output=str(output))
            for segment in task["segments"]
        ]

    results = ray.data.from_items(tasks, override_num_blocks=len(tasks)).flat_map(
        run, num_cpus=ingest.cpus_per_task
    )
    windows = nbytes = 0
    for result in results.iter_rows():
        windows += result["n_windows"]
        nbytes += result["bytes"]
    return dict(seconds=time.perf_counter() - t0, windows=windows, bytes=nbytes)


def _expected_windows(segment: dict[str, Any], ingest: Any) -> int:
    """Windows a planned segment will hold, from the probed duration (as plan_segments counts)."""
    if segment["max_windows"] > 0:
        return int(segment["max_windows"])
    grid = decode.grid_frame_count(
        segment["duration"], ingest.fps, start_sec=segment["start_sec"], end_sec=segment["end_sec"]
    )
    total = decode.count_windows(
        grid, window_frames=ingest.window_frames, window_stride=ingest.window_stride
    )
    return max(1, total - int(segment["first_window"]))


def stage_breakdown(cfg: Config, paths: list[Path], scratch: Path) -> tuple[list[list[Any]], float]:
    """Per-window milliseconds of each step of ingest_segment, in this process.

    Returns the table rows and the probe cost in ms per video.
    """
    from av.video.reformatter import VideoReformatter

    from vidray.data.flow import load_flow_estimator, quantize_flow

    ingest, flow = cfg.ingest, cfg.flow
    estimator = load_flow_estimator(flow.backend, dis_preset=flow.dis_preset)
    cost = dict.fromkeys(
        ["probe", "decode", "decode_fix", "flow", "quantize", "enc_frames", "enc_flow", "write"],
        0.0,
    )
    windows = 0
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        decode.probe(path)
        t1 = time.perf_counter()
        kwargs = dict(fps=ingest.fps, short_side=ingest.short_side, threads=ingest.decode_threads)
        got = list(
            decode.iter_windows(
                path,
                window_frames=ingest.window_frames,
                window_stride=ingest.window_stride,
                **kwargs,
            )
        )
        t2 = time.perf_counter()
        decode_with_shared_reformatter(path, ingest.short_side, VideoReformatter())
        t3 = time.perf_counter()
        cost["probe"] += t1 - t0
        cost["decode"] += t2 - t1
        cost["decode_fix"] += t3 - t2
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
        "decode_fix": "  same, one shared VideoReformatter [proposed]",
        "flow": f"flow ({flow.backend}, preset {flow.dis_preset})",
        "quantize": "quantize flow",
        "enc_frames": f"encode frames ({ingest.frames_codec})",
        "enc_flow": f"encode flow ({flow.codec})",
        "write": "Parquet write (ShardWriter)",
    }
    total = sum(v for k, v in cost.items() if k != "decode_fix")
    rows = [
        [labels[k], 1000 * v / windows, "" if k == "decode_fix" else f"{100 * v / total:.0f}%"]
        for k, v in cost.items()
    ]
    rows.append(["total (without the proposed row)", 1000 * total / windows, "100%"])
    return rows, 1000 * cost["probe"] / len(paths)


def decode_with_shared_reformatter(path: Path, short_side: int, reformatter: Any) -> int:
    """Decode every frame and convert it to RGB at the stored size with one reformatter.

    ``VideoFrame.to_ndarray(width=, height=)`` builds a new VideoReformatter (and so
    a new swscale context) for every frame; sharing one per stream is the fix.
    The source here is at the base fps, so this converts as many frames as
    decode.iter_windows does.
    """
    import av

    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            width, height = decode.output_size(frame.width, frame.height, short_side)
            reformatter.reformat(
                frame, width=width, height=height, format="rgb24", interpolation="AREA"
            ).to_ndarray()
            count += 1
    return count


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


def ray_overhead(cfg: Config, n_items: int, cpus: int, probe_ms: float) -> list[list[Any]]:
    """Ray Data cost with little or no work: the two pipeline shapes run_ingest builds.

    Each row: wall seconds, the ideal (the work divided over the CPUs), the wall
    overhead per task ((seconds - ideal) x CPUs / tasks), and the CPU time per
    task beyond the work itself (all processes of this tree; and the driver's).
    """
    import ray

    def noop(row: dict[str, Any]) -> dict[str, Any]:
        return row

    def sleep(row: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.05)
        return row

    def segment_shape(fn: Any) -> int:
        items = [{"i": i, "pad": "x" * 200} for i in range(n_items)]
        ds = ray.data.from_items(items, override_num_blocks=n_items).map(fn, num_cpus=1)
        return sum(1 for _ in ds.iter_rows())

    entries = [asdict(e) for e in list_sources(cfg.ingest.input, layout="folders").entries]

    def probe_stage() -> int:
        ds = ray.data.from_items(entries, override_num_blocks=len(entries)).map(probe_entry)
        return len(ds.take_all())

    cases = [
        ("no-op map, num_cpus=1, iter_rows (segment stage shape)", segment_shape, noop, 0.0),
        ("50 ms sleep map, same shape", segment_shape, sleep, 0.05 * n_items / cpus),
        ("probe stage alone (real probe_entry, take_all)", None, None, 0.0),
    ]
    rows = []
    meter = bu.CpuMeter()
    for name, shape, fn, ideal in cases:
        meter.start()
        work_cpu = 0.0
        if shape is None:
            seconds, _ = bu.timed(probe_stage)
            work_cpu = probe_ms / 1000 * len(entries)
            ideal = work_cpu / cpus
        else:
            seconds, _ = bu.timed(lambda shape=shape, fn=fn: shape(fn))
        cpu = meter.stop()
        rows.append(
            [
                name,
                n_items,
                seconds,
                ideal,
                1000 * (seconds - ideal) * cpus / n_items,
                1000 * (sum(cpu.values()) - work_cpu) / n_items,
                1000 * cpu["driver"] / n_items,
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bu.add_dataset_args(parser)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument(
        "--profile-videos", type=int, default=12, help="videos in the stage breakdown"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the breakdown tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.repeats, args.profile_videos = min(args.videos, 8), 1, 2
    cpus = bu.cpu_count(args.cpus)
    bu.single_thread_opencv()

    print(f"bench/ingest: {bu.load()} (before)")
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
            f"{width}x{height} (generated in {t_gen:.1f} s)"
        )
        storage = ", ".join(o.split(".", 1)[1] for o in bu.STORAGE_OVERRIDES)
        print(f"storage (both sides): {storage}")

        t_init = bu.start_ray(cpus)
        warm_input = bu.copy_subset(paths[:2], work / "videos", work / "warm_videos")
        t_warm, _ = bu.timed(lambda: ray_ingest(bu.ingest_config(warm_input, work / "warm_out")))
        print(
            f"ray: local, {cpus} CPUs; ray.init {t_init:.1f} s and warm-up ingest of 2 videos "
            f"{t_warm:.1f} s, neither timed"
        )

        single_cfg = bu.ingest_config(work / "videos", work / "out_single")
        ray_cfg = bu.ingest_config(work / "videos", work / "out_ray")
        packed_cfg = bu.ingest_config(work / "videos", work / "out_packed")
        side_cpus = {"single": 1, "ray": cpus, "packed": cpus}
        runs: list[list[Any]] = []
        best: dict[str, dict[str, Any]] = {}
        meter = bu.CpuMeter()
        for r in range(args.repeats):
            for side, fn, cfg in [
                ("single", single_process_ingest, single_cfg),
                ("ray", ray_ingest, ray_cfg),
                ("packed", ray_packed_ingest, packed_cfg),
            ]:
                meter.start()
                result = fn(cfg)
                result["cpu"] = meter.stop()
                result["cpu_s"] = sum(result["cpu"].values())
                result["rate"] = result["windows"] / result["seconds"]
                runs.append(
                    [
                        f"{side} #{r + 1}",
                        side_cpus[side],
                        result["windows"],
                        result["seconds"],
                        result["rate"],
                        result["bytes"] / max(1, result["windows"]) / 1e3,
                        result["cpu_s"],
                        *(result["cpu"][role] for role in bu.CPU_ROLES),
                    ]
                )
                if side not in best or result["rate"] > best[side]["rate"]:
                    best[side] = result
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
                title="ingest runs (best of each side counts; ray = run_ingest; packed = "
                "[proposed] fewer, bigger tasks, see ray_packed_ingest; CPU-s: user+sys "
                "of this process tree, so other users' load does not count)",
            )
        )
        if best["single"]["windows"] != best["ray"]["windows"]:
            print(
                f"WARNING: window counts differ: single {best['single']['windows']}, "
                f"ray {best['ray']['windows']}"
            )

        def min_cpu(side: str) -> float:
            return min(float(row[6]) for row in runs if str(row[0]).startswith(side + " "))

        for side in ("ray", "packed"):
            utilization = best[side]["cpu_s"] / (best[side]["seconds"] * cpus)
            print(
                f"CPU accounting, {side}: the work takes {min_cpu('single'):.2f} CPU-s in one "
                f"process and {min_cpu(side):.2f} CPU-s under Ray (min over runs): work "
                f"efficiency {min_cpu('single') / min_cpu(side):.2f}; the best run kept its "
                f"{cpus} CPUs {100 * utilization:.0f}% busy (ratio ~ efficiency x utilization)"
            )

        if not args.no_profile:
            scratch = work / "profile"
            shutil.rmtree(scratch, ignore_errors=True)
            subset = paths[: args.profile_videos]
            print()
            stages, probe_ms = stage_breakdown(single_cfg, subset, scratch)
            print(
                bu.table(
                    ["stage", "ms/window", "share"],
                    stages,
                    title=f"single-process stage costs ({len(subset)} videos, 1 thread; "
                    f"probe: {probe_ms:.1f} ms/video)",
                )
            )
            print()
            print(
                bu.table(
                    [
                        "Ray Data pipeline",
                        "tasks",
                        "seconds",
                        "ideal s",
                        "wall ms x CPUs/task",
                        "extra CPU-ms/task",
                        "driver CPU-ms/task",
                    ],
                    ray_overhead(single_cfg, best["single"]["segments"], cpus, probe_ms),
                    title=f"Ray Data overhead ({cpus} CPUs)",
                )
            )

        single_rate, ray_rate = best["single"]["rate"], best["ray"]["rate"]
        ideal = best["single"]["seconds"] / cpus
        print()
        print(
            f"single-process: {single_rate:.1f} windows/s; ray ({cpus} CPUs): "
            f"{ray_rate:.1f} windows/s; ideal ray time {ideal:.2f} s, "
            f"actual {best['ray']['seconds']:.2f} s "
            f"(+{best['ray']['seconds'] - ideal:.2f} s overhead)"
        )
        ratio = ray_rate / (single_rate * cpus)
        packed_ratio = best["packed"]["rate"] / (single_rate * cpus)
        print(f"bench/ingest: {bu.load()} (after)")
        print(
            f"[proposed, not vidray today] ratio packed/(single-process x CPUs) = "
            f"{packed_ratio:.2f}"
        )
        print(
            f"ratio ingest/(single-process x CPUs) = {ratio:.2f} (target >= {TARGET}) "
            f"{bu.verdict(ratio, TARGET)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
