"""bench/benchutil.py: the pieces every benchmark's figures rest on (no Ray, no timing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import benchutil as bu


def test_cpu_roles_count_ray_machinery_as_daemons() -> None:
    """/proc names, truncated to 15 characters as Linux does: Ray's agents and internal
    actors are daemons, not the workers that do the benchmark's work."""
    daemons = ["raylet", "gcs_server", "ray::DashboardA", "ray::RuntimeEnv", "ray::_StatsActo"]
    daemons += ["ray-dashboard-M", "python"]
    workers = ["ray::IDLE", "ray::MapBatches(", "ray::SplitCoord"]
    assert {bu._role(1, name) for name in daemons} == {"ray daemons"}
    assert {bu._role(1, name) for name in workers} == {"workers"}
    assert bu._role(os.getpid(), "python") == "driver"


def test_shares_deal_every_item_once() -> None:
    parts = bu.shares(list(range(7)), 3)
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]


def test_median_run_and_target_lines() -> None:
    runs = [bu.Run(units=10, seconds=s, cpu=dict.fromkeys(bu.CPU_ROLES, 1.0)) for s in (1, 4, 2)]
    assert bu.median_run(runs).seconds == 2
    assert runs[0].cpu_ms() == 300.0 and runs[0].cpu_ms("driver") == 100.0
    assert bu.target_line("x", 0.95, 0.9) == "ratio x = 0.95 (target >= 0.9) ok"
    assert bu.target_line("x", 0.5, 0.9).endswith("BELOW TARGET")
    assert (
        bu.target_line("ms", 6.0, 5, at_most=True) == "ratio ms = 6.00 (target <= 5) BELOW TARGET"
    )
