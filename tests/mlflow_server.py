"""A real `mlflow server` on 127.0.0.1 for tests: its own SQLite store and artifact root."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(
    directory: Path, *, artifacts: str = "", env: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """(tracking URI, artifact root) of a server that runs until the block ends;
    ``artifacts`` defaults to a folder in ``directory`` (an s3:// root needs ``env``)."""
    artifacts = artifacts or str(directory / "artifacts")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = directory / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{directory / 'server.db'}",
                "--artifacts-destination",
                artifacts,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"{uri}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {log_path}")
                time.sleep(0.5)
            yield uri, artifacts
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
