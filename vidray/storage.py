"""Where runs keep their files: a local path or a pyarrow filesystem URI.

``train.storage_path`` (checkpoints) may be ``s3://bucket/runs``, ``gs://...``
or any other URI pyarrow understands; Ray Train writes there itself. Reading a
checkpoint back (``train.resume_from``, ``eval.checkpoint``) goes through
`local_dir`, which copies a remote directory to a temporary one first, so the
code that loads ``state.pt`` only ever sees local files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidray.errors import VidrayError


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _filesystem(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VidrayError(f"{uri}: not a filesystem pyarrow can open ({first})") from None


def resolve(path: str | Path) -> str:
    """A URI as is (after checking pyarrow knows its scheme); a local path made absolute,
    since Ray workers run in other directories."""
    if is_uri(path):
        _filesystem(str(path))
        return str(path)
    return str(Path(path).resolve())


def exists(path: str | Path) -> bool:
    """Whether directory ``path`` exists, locally or behind a URI."""
    if not is_uri(path):
        return Path(path).is_dir()
    import pyarrow.fs

    fs, inner = _filesystem(str(path))
    return fs.get_file_info(inner).type == pyarrow.fs.FileType.Directory


@contextmanager
def local_dir(path: str | Path) -> Iterator[Path]:
    """Directory ``path`` on local disk: itself, or a temporary copy of a URI's tree."""
    if not is_uri(path):
        yield Path(path)
        return
    import pyarrow.fs

    fs, inner = _filesystem(str(path))
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        raise VidrayError(f"{path}: no such directory")
    with tempfile.TemporaryDirectory(prefix="vidray-") as tmp:
        pyarrow.fs.copy_files(inner, tmp, source_filesystem=fs)
        yield Path(tmp)
