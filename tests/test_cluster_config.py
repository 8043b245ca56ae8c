"""cluster.yaml: valid for `ray up`, and every command it runs exists here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def _commands() -> list[str]:
    keys = [k for k in CLUSTER if k.endswith("_commands")]
    return [c for k in keys for c in CLUSTER[k]]


def test_cluster_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)


def test_cluster_has_a_cpu_head_and_gpu_worker_types():
    types = CLUSTER["available_node_types"]
    head = types[CLUSTER["head_node_type"]]
    assert "GPU" not in head.get("resources", {})
    gpu = [t for t in types.values() if re.match(r"g5|p[345]", t["node_config"]["InstanceType"])]
    assert len(gpu) >= 2 and all(t["min_workers"] == 0 for t in gpu)


def test_the_working_tree_is_mounted_and_installed():
    assert CLUSTER["file_mounts"]["~/vidray"] == "."
    assert any("pip install -e ." in c and "cd ~/vidray" in c for c in CLUSTER["setup_commands"])
    assert (REPO / "pyproject.toml").is_file()


def _flags(command: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z-]+)", command))


@pytest.mark.slow  # a subprocess
def test_every_mlflow_and_ray_flag_used_exists():
    commands = " ".join(_commands())
    mlflow_help = subprocess.run(
        [sys.executable, "-m", "mlflow", "server", "--help"], capture_output=True, text=True
    ).stdout
    ray_help = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--help"],
        capture_output=True,
        text=True,
    ).stdout
    mlflow_cmd = next(c for c in _commands() if "mlflow server" in c)
    ray_cmds = " ".join(c for c in _commands() if "ray start" in c)
    for flag in _flags(mlflow_cmd):
        assert flag in mlflow_help, f"mlflow server has no {flag}"
    for flag in _flags(ray_cmds):
        assert flag in ray_help, f"ray start has no {flag}"
    assert "mlflow server" in commands and "ray start --head" in commands


def test_nothing_is_exposed_beyond_the_cluster():
    head_start = " ".join(CLUSTER["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "aws_secret_access_key" not in (REPO / "cluster.yaml").read_text().lower()
