"""What ``vidray predict --video`` names: one file, a folder, a CSV of paths or a URI prefix.

Every file found is an input and gets an answer row, video or not: a file that does not
decode is reported as skipped with the reason, never dropped in silence. Hidden files
(a dot name) and the answers' own folder, where it lies inside the input, are left out.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from vidray import storage
from vidray.errors import VidrayError


@dataclass(frozen=True)
class Input:
    """A video to answer for: where it is (an absolute path or a URI) and its version
    (size, mtime): a re-run answers again only a file that changed."""

    video: str
    size: int
    mtime: float


def list_inputs(video: str, *, output: str) -> list[Input]:
    """The inputs ``video`` names, sorted; a one-line error if it names none."""
    if not video:
        raise VidrayError(
            "vidray predict needs --video PATH (a file, a folder, a CSV of paths or a URI)"
        )
    if storage.is_uri(video):
        found = [storage.join(video, name) for name in storage.list_files(video)]
        found = found or ([video] if storage.is_file(video) else [])
    elif Path(video).suffix.lower() == ".csv" and Path(video).is_file():
        found = _csv_paths(Path(video))
    elif Path(video).is_dir():
        found = _folder_files(Path(video), skip=Path(output).resolve())
    elif Path(video).is_file():
        found = [str(Path(video).resolve())]
    else:
        raise VidrayError(f"predict.video={video}: no such file, folder or URI")
    visible = [path for path in found if not path.rsplit("/", 1)[-1].startswith(".")]
    if not visible:
        raise VidrayError(f"predict.video={video}: holds no files")
    return [_versioned(path) for path in sorted(set(visible))]


def _folder_files(folder: Path, *, skip: Path) -> list[str]:
    return [
        str(path.resolve())
        for path in folder.rglob("*")
        if path.is_file() and skip not in path.resolve().parents
    ]


def _csv_paths(path: Path) -> list[str]:
    """The ``path`` column of a CSV; relative paths are relative to the CSV's folder."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    if not rows or "path" not in rows[0]:
        raise VidrayError(f"{path}: a CSV of videos needs a header with a 'path' column")
    found = []
    for line, row in enumerate(rows, start=2):
        value = (row["path"] or "").strip()
        if not value:
            raise VidrayError(f"{path}:{line}: empty path")
        found.append(value if storage.is_uri(value) else str((path.parent / value).resolve()))
    return found


def _versioned(path: str) -> Input:
    size, mtime = storage.stat(path) or (-1, 0.0)
    return Input(video=path, size=size, mtime=mtime)
