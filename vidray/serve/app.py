"""``vidray serve``: a classification checkpoint behind HTTP, as a Ray Serve application.

    client --POST /predict--> Serve's HTTP proxy (serve.host:serve.port)
      -> PredictIngress (0 CPUs; async, many requests at once)
           reads the request (`vidray.serve.request`: 4xx for what it cannot take)
           -> decode task (1 CPU each, a Ray generator task per request:
              `vidray.serve.decoding`), window chunks streamed back
           -> WindowModel.score(chunk), one call per chunk as it arrives
      -> WindowModel (serve.num_replicas replicas, 1 CPU + serve.gpus_per_replica each)
           @serve.batch: the chunks of several requests in one WindowScorer call
      <- JSON: VideoPrediction.to_dict(top_k) (top-k classes and the timeline)

Decoding is the expensive CPU half and runs in tasks anywhere in the cluster, so a
model replica (maybe a GPU's) does nothing but score, in batches as large as the
traffic allows. The ingress holds no model and waits on the others, so it takes no
CPU. A request that cannot be served is answered with its 4xx and a one-line JSON
error by whoever finds the fault; no replica dies of a bad request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from vidray import storage
from vidray.config import Config, ServeConfig
from vidray.errors import VidrayError
from vidray.predict.classifier import (
    Storage,
    VideoPrediction,
    Window,
    WindowScorer,
    load_classifier,
    scored,
)
from vidray.runtime import init_ray
from vidray.serve.decoding import decoded_chunks
from vidray.serve.request import ROUTE, Refused, Source, read_request
from vidray.tracking import tracking_uri

APP = "vidray"
logger = logging.getLogger("ray.serve")


class WindowModel:
    """A model replica: window rows in, class probabilities out, batched across requests."""

    def __init__(self, cfg: ServeConfig, uri: str) -> None:
        classifier = load_classifier(checkpoint_of(cfg, uri))
        device = torch.device("cuda" if cfg.gpus_per_replica > 0 else "cpu")
        self.scorer = WindowScorer(classifier, device=device)
        self.score.set_max_batch_size(cfg.max_batch_size)
        self.score.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch
    async def score(self, chunks: list[list[dict[str, Any]]]) -> list[np.ndarray]:
        """Each chunk's (windows, classes) probabilities, from one pass over them all
        (in a thread, so the next batch gathers while this one computes)."""
        rows = [row for chunk in chunks for row in chunk]
        probs = await asyncio.to_thread(self.scorer, rows)
        ends = np.cumsum([len(chunk) for chunk in chunks])
        return np.split(probs, ends[:-1])


@ray.remote(num_cpus=1, num_returns="streaming", max_retries=0)
def decode_task(
    source: Source, stored: Storage, cfg: ServeConfig
) -> Iterator[list[Window] | Refused]:
    # `video_windows` keeps OpenCV on the task's one core.
    yield from decoded_chunks(
        source, stored, max_duration_s=cfg.max_duration_s, max_upload_mb=cfg.max_upload_mb
    )


class PredictIngress:
    """``POST /predict``: reads the request, has it decoded, has the model score it."""

    def __init__(
        self, model: Any, stored: Storage, classes: tuple[str, ...], cfg: ServeConfig
    ) -> None:
        self.model = model  # a DeploymentHandle to WindowModel
        self.stored = stored
        self.classes = classes
        self.cfg = cfg

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            source, top_k = await read_request(request, self.cfg)
            return JSONResponse((await self.predict(source)).to_dict(top_k))
        except Refused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        except Exception as error:  # a bug, or a decode worker lost: the client is told
            logger.exception("vidray serve: %s %s failed", request.method, request.url.path)
            message = f"internal error: {type(error).__name__}: {error}".splitlines()[0]
            return JSONResponse({"error": message}, status_code=500)

    async def predict(self, source: Source) -> VideoPrediction:
        """The `VideoPrediction` of ``source``: each chunk goes to the model as soon as
        the decode task yields it."""
        windows: list[Window] = []
        scoring = []
        async for ref in decode_task.remote(source, self.stored, self.cfg):
            chunk = await ref
            if isinstance(chunk, Refused):
                for call in scoring:
                    call.cancel()
                raise chunk
            scoring.append(self.model.score.remote([w.row for w in chunk]))
            windows += [Window(w.start_s, w.end_s, {}) for w in chunk]
        probs = await asyncio.gather(*scoring)
        all_probs = np.concatenate(probs) if probs else np.zeros((0, len(self.classes)))
        return scored(source.name, windows, all_probs, self.classes)


def checkpoint_of(cfg: ServeConfig, uri: str, dst: Path | None = None) -> str:
    """The checkpoint ``serve.checkpoint`` names, or the one inside MLflow model
    ``serve.model`` (of tracking and registry ``uri``), downloaded under ``dst``
    (default: a new temporary directory). Each model replica downloads its own copy,
    so a replica on another node needs no file of the driver's."""
    if bool(cfg.checkpoint) == bool(cfg.model):
        raise VidrayError(
            "vidray serve needs one of --checkpoint CKPT (a checkpoint directory or URI) "
            "or --model models:/NAME/VERSION"
        )
    if cfg.checkpoint:
        return cfg.checkpoint
    from vidray.predict.pyfunc import checkpoint_of_model  # mlflow: only where it is used

    return str(checkpoint_of_model(cfg.model, uri=uri, dst=dst))


def build_app(cfg: ServeConfig, uri: str, stored: Storage, classes: tuple[str, ...]) -> Any:
    """The Serve application: the ingress bound to ``serve.num_replicas`` model replicas
    (``uri``: MLflow's, where ``serve.model`` names a model)."""
    model = serve.deployment(WindowModel).options(
        num_replicas=cfg.num_replicas,
        ray_actor_options={"num_cpus": 1, "num_gpus": cfg.gpus_per_replica},
        max_ongoing_requests=max(2 * cfg.max_batch_size, 16),
    )
    ingress = serve.deployment(PredictIngress).options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256
    )
    return ingress.bind(model.bind(cfg, uri), stored, classes, cfg)


def check_settings(cfg: ServeConfig) -> None:
    """A one-line error for settings Serve would take and fail on later."""
    for name in ("num_replicas", "max_batch_size", "port"):
        if getattr(cfg, name) < 1:
            raise VidrayError(f"serve.{name}={getattr(cfg, name)}: 1 or more")
    for name in ("max_upload_mb", "max_duration_s"):
        if getattr(cfg, name) <= 0:
            raise VidrayError(f"serve.{name}={getattr(cfg, name)}: more than 0")
    if cfg.gpus_per_replica < 0 or cfg.batch_wait_timeout_s < 0 or cfg.top_k < 1:
        raise VidrayError(
            "serve.gpus_per_replica and serve.batch_wait_timeout_s: 0 or more; serve.top_k: 1 "
            f"or more (got {cfg.gpus_per_replica}, {cfg.batch_wait_timeout_s}, {cfg.top_k})"
        )
    with socket.socket() as probe:
        try:
            probe.bind((cfg.host, cfg.port))
        except OSError as error:
            raise VidrayError(
                f"serve.host={cfg.host} serve.port={cfg.port}: cannot listen there "
                f"({error.strerror}): pick another --port"
            ) from None


def check_cpus(cfg: ServeConfig) -> None:
    """Each model replica takes a CPU and decoding needs one more, or requests wait forever."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < cfg.num_replicas + 1:
        raise VidrayError(
            f"serve.num_replicas={cfg.num_replicas}: each model replica takes a CPU and "
            f"decoding needs 1 more, but this Ray has {cpus:g} CPUs: lower it"
        )


@dataclass(frozen=True)
class Served:
    """A running application: where it listens."""

    url: str  # http://host:port

    @property
    def predict_url(self) -> str:
        return self.url + ROUTE


def start_serve(cfg: Config) -> Served:
    """Check the settings and the checkpoint, start Ray (``ray.*``) and the application,
    and return once it answers; `stop_serve` stops it."""
    settings = cfg.serve
    check_settings(settings)
    if settings.checkpoint:  # replicas run in other directories
        settings = replace(settings, checkpoint=storage.resolve(settings.checkpoint))
    uri = tracking_uri(cfg.mlflow) if settings.model else ""
    with tempfile.TemporaryDirectory(prefix="vidray-serve-") as tmp:  # its one-line error
        classifier = load_classifier(checkpoint_of(settings, uri, Path(tmp)))  # before Serve
    init_ray(cfg.ray)
    check_cpus(settings)
    logging.getLogger("ray.serve").setLevel(cfg.ray.log_level.upper())  # its INFO lines
    logging_config = {
        "log_level": cfg.ray.log_level.upper(),
        "enable_access_log": cfg.ray.log_level in ("debug", "info"),
    }
    serve.start(
        http_options={"host": settings.host, "port": settings.port},
        logging_config=logging_config,
    )
    app = build_app(settings, uri, classifier.storage, classifier.classes)
    try:
        serve.run(app, name=APP, route_prefix="/", logging_config=logging_config)
    except BaseException:  # a replica that cannot start, Ctrl-C: leave no Serve behind
        stop_serve()
        raise
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return Served(url=f"http://{host}:{settings.port}")


def stop_serve() -> None:
    """Delete the application and stop Serve's controller and proxies (Ray stays up)."""
    serve.shutdown()


def run_serve(cfg: Config) -> int:
    """``vidray serve``: serve until Ctrl-C (or SIGTERM), then stop Serve cleanly."""
    served = start_serve(cfg)
    url = served.predict_url
    lines = [
        f"vidray serve: {url} (Ctrl-C stops it)",
        f"  curl -F file=@VIDEO.mp4 '{url}?top_k={cfg.serve.top_k}'",
        f"  curl -H 'Content-Type: application/json' -d '{{\"uri\": \"s3://...\"}}' {url}",
    ]
    # flushed: a service's log or a pipe must show where it listens while it runs
    print("\n".join(lines), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("vidray serve: stopping")
    finally:
        stop_serve()
    return 0
