"""What a ``POST /predict`` asks for, read from the HTTP request without trusting it.

A request names its video one of three ways:

    multipart/form-data with a file part  (curl -F file=@clip.mp4)      -> the upload
    application/json {"uri": "..."}       (an absolute path or s3:// URI) -> the uri
    any other body                        (curl --data-binary @clip.mp4) -> the body

Everything a client can get wrong is a `Refused` with its HTTP status and a one-line
reason: an unknown route (404), another method (405), no video named (400), a body
over ``serve.max_upload_mb`` (413, from Content-Length before reading and from the
bytes as they stream in). Whether the bytes are a video, and not too long a one, is
for the decoding task (`vidray.serve.decoding`) to find out.

Multipart is parsed here (a few lines over the standard library's header parser):
Starlette's own form parser needs python-multipart, which Ray Serve does not bring.
"""

from __future__ import annotations

import email.message
import email.parser
import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from vidray.config import ServeConfig
from vidray.errors import VidrayError
from vidray.storage import is_uri

ROUTE = "/predict"
MB = 1 << 20


class Refused(VidrayError):
    """A request the server turns down: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)  # both in args, so it pickles (Ray tasks return it)
        self.status = status

    def __str__(self) -> str:
        return self.args[1]


@dataclass(frozen=True)
class Source:
    """The video a request names: uploaded ``data``, or a ``uri`` to read."""

    name: str  # the upload's file name or the uri: the answer's "video"
    data: bytes | None = None
    uri: str = ""


async def read_request(request: Request, cfg: ServeConfig) -> tuple[Source, int]:
    """The video a ``POST /predict`` names and its ``top_k`` (query, else ``serve.top_k``)."""
    if request.url.path.rstrip("/") != ROUTE:
        raise Refused(404, f"no route {request.url.path}: POST {ROUTE}")
    if request.method != "POST":
        raise Refused(405, f"{request.method} {ROUTE}: send the video with POST")
    top_k = _top_k(request.query_params.get("top_k"), cfg.top_k)
    body = await read_body(request, int(cfg.max_upload_mb * MB))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return uploaded(body, content_type), top_k
    if content_type.startswith("application/json"):
        return named(body), top_k
    if not body:
        raise Refused(400, f"empty request: POST {ROUTE} a video file or JSON {{'uri': ...}}")
    return Source(name="upload", data=body), top_k


def _top_k(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise Refused(400, f"top_k={text!r}: a whole number of classes, 1 or more")
    return int(text)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes: from
    its declared Content-Length before any of it is read, else from the bytes read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> Refused:
    return Refused(
        413,
        f"upload of {size / MB:.2f} MB or more is over this server's serve.max_upload_mb="
        f"{limit / MB:g}: send a shorter video, or a uri",
    )


def uploaded(body: bytes, content_type: str) -> Source:
    """The file part of a multipart/form-data body (the one named "file", else the first
    with a file name)."""
    files = {}
    for headers, data in _parts(body, _boundary(content_type)):
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        if filename or name == "file":
            files[name] = Source(name=filename or str(name), data=data)
    if not files:
        raise Refused(400, "the form has no file part: send the video as -F file=@VIDEO")
    return files.get("file") or next(iter(files.values()))


def _boundary(content_type: str) -> bytes:
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise Refused(400, "multipart/form-data without a boundary: let the client set it")
    return boundary.encode("latin-1")


def _parts(body: bytes, boundary: bytes) -> list[tuple[email.message.Message, bytes]]:
    """(headers, content) of each part. RFC 2046: every delimiter is CRLF "--" boundary
    (the first may open the body), the last is followed by "--"."""
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if len(pieces) < 2:
        raise Refused(400, "multipart body without its boundary: not a form upload")
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return parts
        head, found, content = piece.partition(b"\r\n\r\n")
        if not found:
            raise Refused(400, "a multipart part without headers: not a form upload")
        headers = email.parser.BytesHeaderParser().parsebytes(head.lstrip(b" \t\r\n"))
        parts.append((headers, content))
    raise Refused(400, "multipart body cut short (no closing boundary): send it whole")


def named(body: bytes) -> Source:
    """The uri of a JSON body {"uri": "..."}: an s3:// (or other) URI or an absolute path."""
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, 'the JSON body does not parse: send {"uri": "s3://..."}') from None
    uri = document.get("uri") if isinstance(document, dict) else None
    if not isinstance(uri, str) or not uri:
        raise Refused(400, 'the JSON body names no video: send {"uri": "s3://..."}')
    if not is_uri(uri) and not uri.startswith("/"):
        raise Refused(400, f"uri {uri!r}: an absolute path or a URI (the server has no cwd)")
    return Source(name=uri, uri=uri)
