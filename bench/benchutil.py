"""Shared helpers for the benchmarks in bench/: datasets, Ray, timing, tables.

Imported by ``bench/ingest.py`` and ``bench/loader.py`` as a sibling module, so
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
CPU_ROLES = ("driver", "workers", "raylet+gcs", "other")


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


def _role(pid: int, name: str) -> str:
    if pid == os.getpid():
        return "driver"
    if name in ("raylet", "gcs_server"):
        return "raylet+gcs"
    if name.startswith("ray::") and not name.startswith(("ray::_", "ray::Dashboard")):
        return "workers"  # ray::IDLE, or ray::<task> while it runs one
    return "other"  # dashboard, its agents, Ray's internal actors


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


def verdict(ratio: float, target: float) -> str:
    return "ok" if ratio >= target else "BELOW TARGET"
