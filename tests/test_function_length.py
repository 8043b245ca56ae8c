"""No function in vidray/ or pipelines/ runs over a screen: 60 lines, its signature
and docstring included. A longer one mixes steps that read better named."""

from __future__ import annotations

import ast

from commands import REPO

MAX_LINES = 60


def test_no_function_is_over_60_lines():
    too_long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)"
        for package in ("vidray", "pipelines")
        for path in sorted((REPO / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (length := node.end_lineno - node.lineno + 1) > MAX_LINES
    ]
    assert not too_long, "\n".join(too_long)
