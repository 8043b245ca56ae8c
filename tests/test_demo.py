"""`make demo` as a new user runs it, from a fresh folder, shortened to one epoch a
model: it exits 0 and prints vidray's lines only (no traceback, no warning, none of
Ray's INFO logs)."""

from __future__ import annotations

import re

import pytest
from commands import REPO, machine_warning, run_module

DEMO = ("pipelines.demo", "--config", str(REPO / "configs/demo.yaml"), "train.epochs=1")
# vidray's lines: "<command>: ..." or "evaluate [test]: ...", also as the training
# loop's rank 0 prints them and Ray forwards them ("(RayTrainWorker pid=7) train: ...").
VIDRAY_LINE = re.compile(
    r"^(\(RayTrainWorker pid=\d+\) )?(demo|ingest|train|evaluate)( \[\w+\])?: "
)
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _lines(result) -> list[str]:
    every = (result.stdout + result.stderr).splitlines()
    return [COLOUR.sub("", line) for line in every if not machine_warning(line)]


@pytest.mark.slow  # the whole demo: ingest, two trainings, two evaluations (1-3 min)
def test_the_demo_prints_only_its_own_lines(ray_local, tmp_path):
    # ray_local: another Ray runs on the machine meanwhile, as a user's notebook or a
    # second job would (Ray Train's placement-group cleaner once died of it, loudly).
    result = run_module(*DEMO, cwd=tmp_path, timeout=900)
    lines = _lines(result)
    assert result.returncode == 0, "\n".join(lines[-30:])
    assert not [line for line in lines if not VIDRAY_LINE.match(line)]
    # The steps a user reads about in the README, in order.
    steps = [line.split(":")[0] for line in lines if line.startswith(("ingest:", "train:"))]
    assert steps[0] == "ingest" and "train" in steps
    assert any(line.startswith("demo: compare the runs in the MLflow UI") for line in lines)
