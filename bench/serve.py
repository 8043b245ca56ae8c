"""Benchmark: `vidray serve` requests/s and latency, 1 vs N clients, against a ceiling.

A generated motion dataset (default 8 videos of 64 frames at 10 fps, 192x144: 6.4 s
each, stored at 128 px in 32-frame windows, so 2 windows a request) and a small
untrained classifier (simple3d, width 16, 8 frames at stride 4, crop 112) saved as
training saves one. The application (`vidray.serve.app.start_serve`: 1 model replica,
decode tasks, the HTTP proxy) runs in a local Ray of ``--cpus`` CPUs on 127.0.0.1.
Each side runs ``--repeats`` times (default 3; all printed, the median counts):

- **1 client**: one thread posting the videos one after another (multipart uploads,
  ``--requests`` of them): latency is a request's own time, undisturbed by others;
- **N clients** (``--clients``, default 4): N threads posting at once, each its share;
- **ceiling**: K plain processes (K = the CPUs Ray has), each running `predict_video`
  (decode + model, in-process, one thread) over 1/K of the same videos at the same
  time: what K cores give without HTTP, Serve or Ray in between.

    ratio = N-client requests/s / ceiling requests/s                 target >= 0.8

Also printed: the N-client rate against N x the 1-client rate (how far concurrency
goes on these cores), p50/p95 latency, and the CPU-ms per request of each role of the
serving side (this process's client threads, Serve's HTTP proxy, the ingress replica,
the model replica, the task workers that decode, Serve's controller and Ray's daemons),
from /proc (CPU time does not move with other users' load; wall time does, so load
averages are printed before and after).

    PYTHONPATH=. python bench/serve.py            # default sizes (~2 min on 2 cores)
    PYTHONPATH=. python bench/serve.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchutil as bu
import numpy as np
import torch

from vidray.checkpoints import save_checkpoint
from vidray.config import load_config
from vidray.data.ingest import run_ingest
from vidray.data.manifest import read_dataset_info
from vidray.predict.classifier import WindowScorer, load_classifier, predict_video
from vidray.serve.app import start_serve, stop_serve
from vidray.train.loop import build_model

MODEL = ["model.name=simple3d", "model.width=16", "clip.T=8", "clip.stride=4", "clip.crop=112"]
TARGET_RATIO = 0.8
BOUNDARY = "vidray-bench-boundary"
# The serving side's processes, by what Ray's process titles (/proc/<pid>/cmdline) say.
ROLES = {
    "ProxyActor": "proxy",
    "PredictIngress": "ingress",
    "WindowModel": "model",
    "ServeController": "controller",
}
ROLE_ORDER = ["clients", "proxy", "ingress", "model", "task workers", "controller", "daemons"]


def make_checkpoint(work: Path, videos: list[Path], root: Path) -> Path:
    """An untrained classifier saved as training saves one, with the dataset.yaml of
    the videos ingested at the bench storage settings (two videos are enough for it)."""
    data = work / "data"
    if not (data / "dataset.yaml").exists():
        subset = bu.copy_subset(videos[:2], root, work / "ingest_subset")
        run_ingest(bu.ingest_config(subset, data), log=lambda _: None)
    info = read_dataset_info(data)
    classes = sorted({p.parent.name for p in videos})
    info = {**info, "classes": classes}
    cfg = load_config(None, [*MODEL, f"train.data={data}"])
    torch.manual_seed(0)
    model = build_model(cfg, len(classes))
    return save_checkpoint(
        work / "checkpoint",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler={"global_step": 0},
        epoch=0,
        cfg=cfg,
        classes=classes,
        run_id="",
        metrics={},
        dataset=info,
    )


def multipart(path: Path) -> bytes:
    return b"".join(
        [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: video/mp4\r\n\r\n'.encode(),
            path.read_bytes(),
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        ]
    )


def post(url: str, body: bytes) -> float:
    """Seconds one request took (an error if it was not answered 200)."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return time.perf_counter() - t0


def roles_cpu() -> dict[int, tuple[int, str]]:
    """{pid: (CPU ticks, role)} of this process tree."""
    out = {}
    for pid, (ticks, _name) in bu._process_tree().items():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if pid == os.getpid():
            role = "clients"
        else:
            role = next((r for key, r in ROLES.items() if key in title), "")
            if not role:
                worker = title.startswith("ray::") and not title.startswith(bu._RAY_SERVICE_ACTORS)
                role = "task workers" if worker else "daemons"
        out[pid] = (ticks, role)
    return out


def serve_run(url: str, bodies: list[bytes], clients: int) -> tuple[bu.Run, list[float]]:
    """All ``bodies`` posted by ``clients`` threads at once: the run and each latency."""
    before = roles_cpu()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        shares = bu.shares(bodies, clients)
        per_client = pool.map(lambda share: [post(url, body) for body in share], shares)
        latencies = [s for share in per_client for s in share]
    seconds = time.perf_counter() - t0
    cpu = dict.fromkeys(ROLE_ORDER, 0.0)
    for pid, (ticks, role) in roles_cpu().items():
        cpu[role] += (ticks - before.get(pid, (0, role))[0]) / os.sysconf("SC_CLK_TCK")
    return bu.Run(units=len(bodies), seconds=seconds, cpu=cpu), latencies


_SCORER: dict[str, WindowScorer] = {}


def predict_share(share: tuple[str, list[str]]) -> int:
    """A ceiling process's share: its videos through `predict_video` in-process."""
    checkpoint, paths = share
    torch.set_num_threads(1)  # as a Ray task of 1 CPU runs
    if checkpoint not in _SCORER:
        _SCORER[checkpoint] = WindowScorer(load_classifier(checkpoint), device=torch.device("cpu"))
    for path in paths:
        predict_video(Path(path), _SCORER[checkpoint])
    return len(paths)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def latency_row(label: str, run: bu.Run, latencies: list[float]) -> list[Any]:
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    return [label, run.units, run.seconds, run.rate, p50, p95, run.cpu_ms()]


def measure(
    url: str, bodies: list[bytes], clients: int, repeats: int
) -> dict[str, list[tuple[bu.Run, list[float]]]]:
    """The 1-client and N-client sides, alternating, ``repeats`` times each."""
    sides: dict[str, list[tuple[bu.Run, list[float]]]] = {"1 client": [], f"{clients} clients": []}
    for _ in range(repeats):
        sides["1 client"].append(serve_run(url, bodies, 1))
        sides[f"{clients} clients"].append(serve_run(url, bodies, clients))
    return sides


def report(
    sides: dict[str, list[tuple[bu.Run, list[float]]]],
    ceiling: list[bu.Run],
    cpus: int,
    clients: int,
) -> float:
    """Print the tables; return the N-client / ceiling ratio."""
    rows, medians = [], {}
    for label, runs in sides.items():
        middle = bu.median_run([run for run, _ in runs])
        for i, (run, latencies) in enumerate(runs):
            mark = " (median)" if run is middle else ""
            rows.append(latency_row(f"{label} #{i + 1}{mark}", run, latencies))
        medians[label] = middle
    ceiling_median = bu.median_run(ceiling)
    for i, run in enumerate(ceiling):
        mark = " (median)" if run is ceiling_median else ""
        rows.append(
            [
                f"ceiling {cpus} processes #{i + 1}{mark}",
                run.units,
                run.seconds,
                run.rate,
                "-",
                "-",
                run.cpu_ms(),
            ]
        )
    headers = ["run", "requests", "seconds", "requests/s", "p50 ms", "p95 ms", "CPU-ms/req"]
    print(bu.table(headers, rows))
    one, many = medians.values()
    print()
    print(
        bu.table(
            ["side (median run)", *(f"{role} CPU-ms" for role in ROLE_ORDER)],
            [[label, *(run.cpu_ms(role) for role in ROLE_ORDER)] for label, run in medians.items()],
        )
    )
    print()
    print(
        f"{clients} clients / ({clients} x 1 client): {many.rate / (clients * one.rate):.2f}; "
        f"{clients} clients / 1 client: {many.rate / one.rate:.2f}x"
    )
    return many.rate / ceiling_median.rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bu.add_dataset_args(parser, videos=8, frames=64)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=24, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side")
    parser.add_argument(
        "--batch-wait", type=float, default=None, help="serve.batch_wait_timeout_s (s)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.requests, args.repeats = 4, 8, 1
    cpus = bu.cpu_count(args.cpus)
    print(f"bench/serve: {bu.load()} (before)")
    tag = bu.dataset_tag(args.videos, args.frames, args.video_fps, args.size)
    with bu.workdir(args.workdir) as work:
        root = work / f"videos_{tag}"
        videos = bu.make_videos(
            root, videos=args.videos, frames=args.frames, fps=args.video_fps, size=args.size
        )
        t_init = bu.start_ray(cpus)
        checkpoint = make_checkpoint(work, videos, root)
        requests = [videos[i % len(videos)] for i in range(args.requests)]
        width, height = args.size
        print(
            f"requests: {len(requests)} uploads a run of {len(videos)} videos x {args.frames} "
            f"frames at {args.video_fps:g} fps, {width}x{height} ({videos[0].stat().st_size:,} "
            f"bytes each or so); model: {' '.join(MODEL)}; ray: local, {cpus} CPUs "
            f"(ray.init {t_init:.1f} s, untimed)"
        )
        overrides = [f"serve.checkpoint={checkpoint}", f"serve.port={free_port()}"]
        if args.batch_wait is not None:
            overrides.append(f"serve.batch_wait_timeout_s={args.batch_wait}")
        cfg = load_config(None, overrides)
        print(
            f"serve: 1 model replica, max_batch_size {cfg.serve.max_batch_size} chunks, "
            f"batch_wait_timeout_s {cfg.serve.batch_wait_timeout_s:g}"
        )
        url = start_serve(cfg).predict_url
        bodies = [multipart(path) for path in requests]
        try:
            for body in bodies[: 2 * args.clients]:  # warm-up: replicas, decode workers
                post(url, body)
            sides = measure(url, bodies, args.clients, args.repeats)
        finally:
            stop_serve()
        with bu.ceiling_pool(cpus) as pool:
            share = [(str(checkpoint), [str(p) for p in s]) for s in bu.shares(requests, cpus)]
            bu.warm_ceiling(pool, predict_share, (str(checkpoint), []), cpus)
            ceiling = [bu.run_ceiling(pool, predict_share, share) for _ in range(args.repeats)]
        ratio = report(sides, ceiling, cpus, args.clients)
    print(f"bench/serve: {bu.load()} (after)")
    print(
        bu.target_line(f"serve {args.clients} clients/{cpus}-process ceiling", ratio, TARGET_RATIO)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
