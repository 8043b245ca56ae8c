"""Paths as a user types them: relative, with ~, or a URI."""

from __future__ import annotations

from pathlib import Path

from vidray import storage


def test_a_home_relative_path_means_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("~/data") == str(tmp_path / "data")
    assert not (tmp_path / "~").exists()


def test_a_relative_path_is_made_absolute_where_it_was_typed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("runs/x") == str(Path(tmp_path, "runs/x"))
    assert storage.resolve("file:///data/runs") == "file:///data/runs"  # a URI stays
