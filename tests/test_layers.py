"""The packages form layers that import only downwards:

    base (errors, config, storage, tracking, runtime, checkpoints, device)
      -> data -> models -> train -> detect -> predict -> serve -> tune -> cli, demo
      -> pipelines

Every import counts, also one inside a function: a lazy import that reaches up a
layer is a cycle waiting for the next refactor. Within a layer anything goes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from commands import REPO

LAYERS = [
    {
        "vidray",
        "vidray.errors",
        "vidray.config",
        "vidray.storage",
        "vidray.tracking",
        "vidray.runtime",
        "vidray.checkpoints",
        "vidray.device",
        "vidray.state_dicts",
    },
    {"vidray.data"},
    {"vidray.models"},
    {"vidray.train"},
    {"vidray.detect"},
    {"vidray.predict"},
    {"vidray.serve"},
    {"vidray.tune"},
    {"vidray.cli", "vidray.demo", "vidray.__main__"},
    {"pipelines"},
]


def layer(module: str) -> int:
    """The layer of ``module``: that of the longest listed name it is or lies under."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        for rank, names in enumerate(LAYERS):
            if name in names:
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for package in ("vidray", "pipelines"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every vidray or pipelines import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = module.split(".")[: -node.level or None]
                names = [".".join([*base, node.module or ""]).rstrip(".")]
            else:
                names = [node.module or ""]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ("vidray", "pipelines")]
    return found


def test_every_import_points_down_the_layers():
    upward = [
        f"{path.relative_to(REPO)}:{line}: {module} (layer {layer(module)}) imports "
        f"{target} (layer {layer(target)})"
        for module, path in modules().items()
        for line, target in imports(path, module)
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The walk above finds an import inside a function, as a lazy one would be."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from vidray.detect.task import DETECT\n    return DETECT\n")
    assert imports(module, "vidray.models.lazy") == [(2, "vidray.detect.task")]
    assert layer("vidray.detect.task") > layer("vidray.models.lazy")


@pytest.mark.slow  # a subprocess importing torch
def test_the_packages_import_top_down_in_a_fresh_interpreter():
    """Imported from the top layer down, a cycle would meet a half-initialised module."""
    order = ["pipelines.train", "vidray.cli", "vidray.tune.sweep", "vidray.detect"]
    order += ["vidray.train.driver", "vidray.models", "vidray.data.ingest"]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in order)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)
