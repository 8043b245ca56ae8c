"""A request's video decoded into window rows, in a Ray task of its own: the CPU half of
a prediction, kept off the model replica.

    Source (upload bytes | uri) -> local file -> probe: a video? not too long?
      -> video_windows (decode, flow, JPEG: the rows ingest stores)
      -> chunks of WINDOWS_PER_BATCH windows, streamed back as each is ready

Streaming (a Ray generator task) lets the model score a long video's first windows
while the rest decode, and bounds what is held at a time. Whatever the client sent,
the task returns: a file that is no video, or too long a one, comes back as a
`Refused` (422) in place of the first chunk, or of the chunk where decoding failed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vidray import storage
from vidray.data.decode import probe
from vidray.errors import VideoError, VidrayError
from vidray.predict.classifier import WINDOWS_PER_BATCH, Storage, Window, video_windows
from vidray.serve.request import MB, Refused, Source


def decoded_chunks(
    source: Source, stored: Storage, *, max_duration_s: float, max_upload_mb: float
) -> Iterator[list[Window] | Refused]:
    """The windows of ``source`` in chunks, or one `Refused` saying why there are none
    (or no more)."""
    try:
        with _local_file(source, max_upload_mb) as path:
            info = probe(path)
            if info.duration > max_duration_s:
                raise Refused(
                    422,
                    f"{source.name}: {info.duration:.1f} s long, over this server's "
                    f"serve.max_duration_s={max_duration_s:g}: send a shorter clip",
                )
            chunk: list[Window] = []
            for window in video_windows(path, stored):
                chunk.append(window)
                if len(chunk) == WINDOWS_PER_BATCH:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
    except Refused as refused:
        yield refused
    except VidrayError as error:  # VideoError: not a video, truncated, no frames
        yield Refused(422, f"{source.name}: {error}".replace("\n", " "))


@contextlib.contextmanager
def _local_file(source: Source, max_upload_mb: float) -> Iterator[Path]:
    """The video on this node's disk: the upload written to a temporary file, or the
    uri itself (a local path) or a temporary copy of it (an object store's)."""
    if source.data is None:
        found = storage.stat(source.uri)
        if found is None:
            raise Refused(400, f"uri {source.uri}: no such file")
        if found[0] > max_upload_mb * MB:
            raise Refused(
                413,
                f"uri {source.uri}: {found[0] / MB:.1f} MB, over this server's "
                f"serve.max_upload_mb={max_upload_mb:g}",
            )
        with storage.local_file(source.uri) as path:
            yield path
        return
    if not source.data:
        raise VideoError("the upload is empty (0 bytes)")
    suffix = Path(source.name).suffix if source.name.isprintable() else ""
    with tempfile.NamedTemporaryFile(prefix="vidray-serve-", suffix=suffix[:16]) as file:
        file.write(source.data)
        file.flush()
        yield Path(file.name)
