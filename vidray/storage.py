"""Where vidray keeps files: a local path or a pyarrow filesystem URI.

Input videos (``ingest.input``), ingest outputs (``ingest.output``,
``train.data``: shards, manifest, dataset.yaml), checkpoints
(``train.storage_path``) may be ``s3://bucket/...``, ``gs://...`` or any other
URI pyarrow understands, with credentials from the environment or the
instance role. Ray Train writes checkpoints there itself; the data layer goes
through the functions here. Anything PyAV, OpenCV or ``torch.load`` must read
is first copied to local disk (`local_file`, `local_dir`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    """A URI as is (after checking pyarrow knows its scheme); a local path made absolute
    (``~`` expanded, as a shell would), since Ray workers run in other directories."""
    if is_uri(path):
        _filesystem(str(path))
        return str(path)
    return str(Path(path).expanduser().resolve())


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


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...``: a URI stays a URI, a local path stays a path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def stat(path: str | Path) -> tuple[int, float] | None:
    """(size, mtime) of a file, or None when there is none."""
    if not is_uri(path):
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime
    import pyarrow.fs

    fs, inner = _filesystem(str(path))
    info = fs.get_file_info(inner)
    if info.type != pyarrow.fs.FileType.File:
        return None
    return info.size, info.mtime.timestamp() if info.mtime else 0.0


def is_file(path: str | Path) -> bool:
    return stat(path) is not None


def read_bytes(path: str | Path) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, inner = _filesystem(str(path))
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file so that readers see the old one or the new one, never a part:
    locally through a temporary file and a rename, remotely as one object upload."""
    if not is_uri(path):
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, inner = _filesystem(str(path))
    with fs.open_output_stream(inner) as stream:
        stream.write(data)


def write_new(path: str | Path, data: bytes) -> bool:
    """Create file ``path`` holding ``data`` unless there is one; whether it was created.

    Locally one exclusive create (O_CREAT|O_EXCL): of two callers exactly one wins.
    An object store gets a check and an upload, so two callers within one round
    trip may both write; the caller reads the file back to see whose it is.
    """
    if not is_uri(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return True
    if is_file(path):
        return False
    write_bytes(path, data)
    return True


def upload(local: Path, dest: str | Path) -> None:
    """Move a finished local file to ``dest``, which appears only once complete."""
    if not is_uri(dest):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, dest)
        return
    import pyarrow.fs

    fs, inner = _filesystem(str(dest))
    pyarrow.fs.copy_files(str(local), inner, destination_filesystem=fs)
    local.unlink()


def open_input(path: str | Path) -> Any:
    """A seekable file (for pyarrow.parquet): the local path itself, or a remote file."""
    if not is_uri(path):
        return str(path)
    fs, inner = _filesystem(str(path))
    return fs.open_input_file(inner)


def list_files(directory: str | Path) -> list[str]:
    """Every file under ``directory``, as sorted posix paths relative to it ([] if none)."""
    if not is_uri(directory):
        root = Path(directory)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    import pyarrow.fs

    fs, inner = _filesystem(str(directory))
    selector = pyarrow.fs.FileSelector(inner, recursive=True, allow_not_found=True)
    prefix = inner.rstrip("/") + "/"
    return sorted(
        info.path[len(prefix) :]
        for info in fs.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.File
    )


def remove(path: str | Path) -> None:
    if not is_uri(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, inner = _filesystem(str(path))
    fs.delete_file(inner)


def makedirs(directory: str | Path) -> None:
    """Create a local directory; object stores have none to create."""
    if not is_uri(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)


@contextmanager
def local_file(path: str | Path) -> Iterator[Path]:
    """File ``path`` on local disk: itself, or a temporary copy of a remote one (PyAV and
    OpenCV read local files only)."""
    if not is_uri(path):
        yield Path(path)
        return
    suffix = Path(str(path).rsplit("/", 1)[-1]).suffix
    with tempfile.TemporaryDirectory(prefix="vidray-") as tmp:
        local = Path(tmp) / f"input{suffix}"
        local.write_bytes(read_bytes(path))
        yield local
