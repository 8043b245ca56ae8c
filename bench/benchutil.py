"""Shared helpers for the benchmarks in bench/: datasets, Ray, timing, tables.

Every ratio is against a ceiling measured in the same run on the same machine: for
parallel work, K plain processes each doing 1/K of it at once (`ceiling_pool`,
`run_ceiling`), K the CPUs the Ray side has; never one process x K, which a shared
machine's cores do not reach. Each side runs >= 3 times and the median counts.

Imported by ``bench/ingest.py``, ``bench/loader.py`` and ``bench/train.py`` as a sibling module, so
run the benchmarks as scripts (``python bench/ingest.py``), as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from vidray.config import Config, RayConfig, load_config
from vidray.data.synthetic import MOTIONS, write_motion_dataset

# The storage parameters both sides of every comparison use (ingest defaults, spelled out).
STORAGE_OVERRIDES = [
    "ingest.fps=10",
    "ingest.short_side=128",
    "ingest.window_frames=32",
    "ingest.window_stride=32",
    "ingest.frames_codec=jpeg",
    "ingest.decode_threads=1",
    "ingest.cpus_per_task=1",
    "flow.backend=dis",
    "flow.codec=raw",
]


def add_dataset_args(
    parser: argparse.ArgumentParser, *, videos: int = 48, frames: int = 64
) -> None:
    """The flags that size the generated dataset, the Ray run and the work dir."""
    parser.add_argument("--videos", type=int, default=videos, help="videos to generate")
    parser.add_argument("--frames", type=int, default=frames, help="frames per generated video")
    parser.add_argument("--video-fps", type=float, default=10.0, help="fps of generated videos")
    parser.add_argument(
        "--size", type=parse_size, default=(192, 144), help="WxH of generated videos"
    )
    parser.add_argument(
        "--cpus", type=int, default=0, help="CPUs for the local Ray (0 = all cores)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="work here, not in a temp dir")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")


def dataset_tag(videos: int, frames: int, fps: float, size: tuple[int, int]) -> str:
    """A directory name for a generated dataset, so a --workdir rerun never reuses another."""
    return f"{videos}x{frames}_{fps:g}fps_{size[0]}x{size[1]}"


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 192x144, got {text!r}") from None


def cpu_count(requested: int) -> int:
    return requested or os.cpu_count() or 1


def load() -> str:
    """The 1/5/15-minute load averages, to print before and after a run."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """``path`` (created, kept) or a temporary directory (deleted afterwards)."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="vidray-bench-") as tmp:
        yield Path(tmp)


def make_videos(
    root: Path, *, videos: int, frames: int, fps: float, size: tuple[int, int], seed: int = 0
) -> list[Path]:
    """The motion dataset (folders layout) with about `videos` videos, across up to 8 classes.

    Reuses ``root`` when it already holds the same number of videos (a --workdir
    rerun): name it with `dataset_tag`.
    """
    classes = min(len(MOTIONS), max(1, videos))
    per_class = math.ceil(videos / classes)
    existing = sorted(root.rglob("*.mp4")) if root.exists() else []
    if len(existing) == classes * per_class:
        return existing
    shutil.rmtree(root, ignore_errors=True)
    return write_motion_dataset(
        root,
        classes=classes,
        videos_per_class=per_class,
        num_frames=frames,
        fps=fps,
        size=size,
        seed=seed,
    )


def copy_subset(paths: Sequence[Path], src_root: Path, dst_root: Path) -> Path:
    """Copy some videos into ``dst_root`` with the same class folders (a warm-up input)."""
    shutil.rmtree(dst_root, ignore_errors=True)
    for path in paths:
        target = dst_root / path.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return dst_root


def ingest_config(input_dir: Path, output_dir: Path, extra: Sequence[str] = ()) -> Config:
    return load_config(
        None,
        [f"ingest.input={input_dir}", f"ingest.output={output_dir}", *STORAGE_OVERRIDES, *extra],
    )


def start_ray(num_cpus: int) -> float:
    """Start a local Ray with `num_cpus` CPUs; returns the seconds it took (never benchmarked)."""
    from vidray.runtime import init_ray

    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=num_cpus))
    return time.perf_counter() - t0


def single_thread_opencv() -> None:
    """One OpenCV thread in this process, as each Ray task gets with cpus_per_task=1."""
    cv2.setNumThreads(1)


_TICKS = os.sysconf("SC_CLK_TCK")
CPU_ROLES = ("driver", "workers", "ray daemons")


def _process_tree() -> dict[int, tuple[int, str]]:
    """{pid: (user+sys clock ticks, name)} of this process and all its descendants.

    A local Ray started by this process (raylet, gcs_server, dashboard, workers)
    descends from it; other users' processes on the machine do not count.
    """
    stats: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = (int(fields[11]) + int(fields[12]), name, int(fields[1]))
    me = os.getpid()
    tree = {}
    for pid, (ticks, name, _) in stats.items():
        node, seen = pid, 0
        while node not in (me, 0, 1) and node in stats and seen < 64:
            node, seen = stats[node][2], seen + 1
        if node == me:
            tree[pid] = (ticks, name)
    return tree


# Ray processes named ray::<x> that are Ray's own machinery, not a task or an actor of
# the work (/proc truncates names to 15 characters: ray::DashboardA, ray::_StatsActo).
_RAY_SERVICE_ACTORS = ("ray::_", "ray::Dashboard", "ray::RuntimeEnv")


def _role(pid: int, name: str) -> str:
    """driver (this process), ray workers (ray::IDLE, ray::<task>, Ray Data's
    SplitCoordinator: the processes that run the work), or ray daemons (raylet,
    gcs_server, dashboard and its agents, log monitor, Ray's internal actors)."""
    if pid == os.getpid():
        return "driver"
    if name.startswith("ray::") and not name.startswith(_RAY_SERVICE_ACTORS):
        return "workers"
    return "ray daemons"


class CpuMeter:
    """CPU seconds used by this process tree between `start` and `stop`, by role.

    Unlike wall time this does not move with other users' load, so it shows how
    much work Ray adds on top of the work itself. Processes that exit in between
    are not counted.
    """

    def __init__(self) -> None:
        self._before: dict[int, tuple[int, str]] = {}

    def start(self) -> None:
        self._before = _process_tree()

    def stop(self) -> dict[str, float]:
        out = dict.fromkeys(CPU_ROLES, 0.0)
        for pid, (ticks, name) in _process_tree().items():
            used = ticks - self._before.get(pid, (0, name))[0]
            out[_role(pid, name)] += used / _TICKS
        return out


# --- the same-run ceiling: K plain processes, each doing 1/K of the work


@dataclass
class Run:
    """One timed repetition: units of work (clips, windows), wall seconds, CPU-s by role."""

    units: int
    seconds: float
    cpu: dict[str, float]
    slot_use: float | None = None

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    def cpu_ms(self, role: str | None = None) -> float:
        """CPU-ms per unit: of one role, or of all together."""
        used = self.cpu[role] if role else sum(self.cpu.values())
        return 1000 * used / max(1, self.units)


def shares(items: Sequence[Any], k: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``k`` shares (as even as they can be)."""
    return [list(items[i::k]) for i in range(k)]


def _timed_share(work: Callable[..., int], share: Any) -> tuple[int, float]:
    """Runs in a ceiling process: (units of work done, CPU seconds it took)."""
    t0 = time.process_time()
    units = work(share)
    return units, time.process_time() - t0


def _warm(_: int) -> int:
    return os.getpid()


def _warm_share(work: Callable[[Any], int], share: Any) -> int:
    work(share)  # unpickling `work` imports its module (vidray, cv2, pyarrow) here
    time.sleep(0.5)  # so that every process of the pool takes one of these
    return os.getpid()


def warm_ceiling(pool: Any, work: Callable[[Any], int], empty_share: Any, k: int) -> None:
    """Each of the ``k`` processes of ``pool`` imports what ``work`` needs and runs it
    on ``empty_share``, untimed (as a Ray side's warm-up epoch starts its workers)."""
    pids = pool.starmap(_warm_share, [(work, empty_share)] * k, chunksize=1)
    if len(set(pids)) < k:
        print(f"note: only {len(set(pids))} of {k} ceiling processes warmed up")


@contextlib.contextmanager
def ceiling_pool(k: int) -> Iterator[Any]:
    """K plain processes (multiprocessing, spawn: no state inherited from this one,
    as a Ray worker), started and warmed up before anything is timed."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(k, initializer=single_thread_opencv)
    try:
        pool.map(_warm, range(k), chunksize=1)
        yield pool
    finally:
        pool.terminate()
        pool.join()


def run_ceiling(pool: Any, work: Callable[[Any], int], work_shares: Sequence[Any]) -> Run:
    """One ceiling run: each process of ``pool`` does one share at the same time.

    ``work`` (a module-level function, so it pickles) takes a share and returns the
    units it did. Wall time is this process's, from handing out the shares to the
    last result; CPU is the processes' own (process_time), all counted as workers.
    """
    t0 = time.perf_counter()
    results = pool.starmap(_timed_share, [(work, s) for s in work_shares], chunksize=1)
    seconds = time.perf_counter() - t0
    units = sum(r[0] for r in results)
    cpu = dict.fromkeys(CPU_ROLES, 0.0)
    cpu["workers"] = sum(r[1] for r in results)
    return Run(units=units, seconds=seconds, cpu=cpu)


def median_run(runs: Sequence[Run]) -> Run:
    """The repetition with the median rate (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]


def run_rows(label: str, runs: Sequence[Run], cpus: int) -> list[list[Any]]:
    """Table rows for every repetition of a side, the median marked."""
    middle = median_run(runs)
    rows = []
    for i, run in enumerate(runs):
        rows.append(
            [
                f"{label} #{i + 1}" + (" (median)" if run is middle else ""),
                cpus,
                run.units,
                run.seconds,
                run.rate,
                "-" if run.slot_use is None else f"{100 * run.slot_use:.0f}%",
                run.cpu_ms(),
                *(run.cpu_ms(role) for role in CPU_ROLES),
            ]
        )
    return rows


RUN_HEADERS = [
    "run",
    "CPUs",
    "units",
    "seconds",
    "units/s",
    "slot use",
    "CPU-ms/unit",
    *(f"{role} CPU-ms" for role in CPU_ROLES),
]


# --- Ray Data: slot use from task timelines, and the path training reads through


def slot_use(windows: Sequence[tuple[float, float]], slots: int) -> list[float]:
    """For each (start, end) wall-clock window (time.time()), the share of ``slots``
    CPU slots that Ray Data map tasks kept busy: the summed time of their executions
    inside the window (from `ray.timeline()`) / (slots x window length).

    Call after the windows: Ray flushes task events about once a second.
    """
    import logging

    import ray

    time.sleep(2.5)
    # ray.timeline() warns that it will read from the dashboard in future Ray releases.
    logging.getLogger("ray._private.state").setLevel(logging.ERROR)
    tasks = [
        (e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
        for e in ray.timeline()
        if e.get("ph") == "X" and str(e.get("name", "")).endswith("_map_task")
    ]
    out = []
    for start, end in windows:
        busy = sum(max(0.0, min(end, t1) - max(start, t0)) for t0, t1 in tasks)
        out.append(busy / (slots * (end - start)))
    return out


def training_shard(ds: Any, cfg: Config) -> Any:
    """``ds`` as one Ray Train worker of a 1-worker run gets it: through the run's
    `DataConfig` (vidray.train.driver.data_config: its execution options, a streaming
    split), so a benchmark reads with the options training uses."""
    from vidray.train.driver import data_config

    return data_config(cfg).configure(
        {"train": ds}, world_size=1, worker_handles=None, worker_node_ids=None
    )[0]["train"]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> str:
    """A plain fixed-width table; floats get 2 decimals unless already formatted."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first = f"{values[0]:<{widths[0]}}"
        rest = [f"{v:>{w}}" for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def verdict(ratio: float, target: float, *, at_most: bool = False) -> str:
    met = ratio <= target if at_most else ratio >= target
    return "ok" if met else "BELOW TARGET"


def target_line(name: str, value: float, target: float, *, at_most: bool = False) -> str:
    """The last lines of every benchmark, one per target, for a reader or a script:
    ``ratio NAME = X (target >= Y) ok`` or ``... BELOW TARGET`` (``<=`` for costs)."""
    sign = "<=" if at_most else ">="
    return (
        f"ratio {name} = {value:.2f} (target {sign} {target:g}) "
        f"{verdict(value, target, at_most=at_most)}"
    )
