"""The best checkpoint of a training run as an MLflow model, logged by its task.

Training sits below the packages that know how to use a checkpoint (`vidray.predict`
knows a classifier), so a task registers how its checkpoints become an MLflow model,
as it registers its evaluator (`vidray.train.evaluate.register_evaluator`):

    vidray.predict.pyfunc:  register_model_logger("classify", log_classifier)
    driver.record():        log_model(task, uri, run_id, best checkpoint, train.register_model)
      -> <run>/model (+ models:/NAME/VERSION), tag vidray.model_uri on the run

The run's checkpoint artifact is logged before; a model that fails to log (a server
gone, a name the registry refuses) costs a warning line, never the training run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from vidray import tracking

# (tracking URI, run id, checkpoint directory, registered model name or "") -> model URI
ModelLogger = Callable[..., str]
_LOGGERS: dict[str, ModelLogger] = {}


def register_model_logger(task: str, logger: ModelLogger) -> None:
    """How a checkpoint of ``train.task=<task>`` is logged as an MLflow model."""
    if task in _LOGGERS:
        raise ValueError(f"a model logger for task {task!r} is registered twice")
    _LOGGERS[task] = logger


def log_model(
    task: str, uri: str, run_id: str, checkpoint_dir: str | Path, register_as: str
) -> str:
    """Log ``checkpoint_dir`` as the run's MLflow model by ``task``'s logger (registered
    as ``register_as`` where set) and tag the run with its URI; the URI, or "" where
    the task has no logger or logging failed (a warning line says why: the run, its
    metrics and checkpoint artifact stay as they are)."""
    logger = _LOGGERS.get(task)
    if logger is None:
        if register_as:
            _warn(
                f"train.task={task} has no MLflow model: train.register_model={register_as} "
                "registers nothing"
            )
        return ""
    try:
        model_uri = logger(uri, run_id, checkpoint_dir, register_as=register_as)
        tracking.client(uri).set_tag(run_id, tracking.MODEL_URI_TAG, model_uri)
    except Exception as exc:  # whatever failed, the trained run must not be lost to it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        what = f"registered as {register_as!r}" if register_as else "logged"
        _warn(
            f"the MLflow model was not {what} ({type(exc).__name__}: {reason}); the run "
            f"and its checkpoint artifact are kept: serve or predict with --checkpoint"
        )
        return ""
    print(f"train: MLflow model {model_uri}", flush=True)
    return model_uri


def _warn(message: str) -> None:
    print(f"train: warning: {message}", file=sys.stderr, flush=True)
