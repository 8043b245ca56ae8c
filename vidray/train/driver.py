"""The training driver: ingest output -> Ray Train -> an MLflow run.

cfg = check_training(cfg)                                    # no Ray: fails in seconds
clips = task_of(cfg).dataset(cfg, split, ...)               # Ray Data
run_id = tracking.start_run(cfg)                             # params
TorchTrainer(train_loop_per_worker, datasets=clips).fit()    # metrics per epoch
log config + best checkpoint as artifacts

A worker that dies restarts the worker group from the last checkpoint, up to
``train.max_failures`` times (Ray Train's FailureConfig). Ctrl-C (or SIGTERM,
where the program turns it into Ctrl-C, as the CLI does) aborts the run, keeps
its checkpoints, ends the MLflow run KILLED and raises `Interrupted` naming the
checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidray import storage, tracking
from vidray.checkpoints import check_resumable
from vidray.config import Config
from vidray.data.manifest import read_dataset_info
from vidray.data.reading import start_epoch_clock
from vidray.errors import Interrupted, VidrayError
from vidray.models import entry
from vidray.train import publish
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model, train_loop_per_worker
from vidray.train.preflight import check_settings, check_settings_against, labeled_split_counts
from vidray.train.selection import SCORE, select_best
from vidray.train.tasks import Task, task_of


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    checkpoint: str  # the best by the task's metric (val video accuracy, val frame-mAP)
    last_checkpoint: str  # the last epoch's: what train.resume_from takes
    metrics: dict[str, Any]
    num_classes: int
    seconds: float
    metric: str = tracking.VAL_VIDEO_TOP1

    def report(self) -> str:
        video = self.metrics.get(tracking.VAL_VIDEO_TOP1)
        lines = [
            f"train: {self.seconds:.0f} s; best checkpoint (epoch {self.metrics.get('epoch')}) "
            f"{self.checkpoint}",
        ]
        if self.metric != tracking.VAL_VIDEO_TOP1 and self.metric in self.metrics:
            lines.append(f"train: {self.metric} {self.metrics[self.metric]:.3f}")
        if video is not None:
            lines.append(
                f"train: val video accuracy {video:.3f} "
                f"(clip {self.metrics.get(tracking.VAL_CLIP_TOP1, 0):.3f}; "
                f"chance {1 / self.num_classes:.3f})"
            )
        lines.append(f"train: MLflow run {self.run_id}: {self.ui_command()}")
        return "\n".join(lines)

    def ui_command(self) -> str:
        return tracking.ui_command(self.tracking_uri)


def check_data(cfg: Config, info: dict[str, Any]) -> None:
    """`check_settings` on the resolved clip, then the model on it and the checkpoint to
    resume: errors that would otherwise surface inside a worker, an hour later."""
    check_settings_against(cfg, info)
    model = check_model(cfg, num_classes=len(info["classes"]))
    if cfg.train.resume_from:
        check_resumable(
            cfg.train.resume_from, model=model, classes=info["classes"], epochs=cfg.train.epochs
        )


def check_model(cfg: Config, *, num_classes: int) -> nn.Module:
    """Build the model and run one clip through it, on the meta device (shapes only, so
    even the largest families cost nothing): an unknown model or argument, or a clip
    the model cannot take (too few frames for its temporal kernels), fails here, before
    any worker starts, instead of in the first training step.

    Only the user's clip can be at fault for a clip error, so the family first runs
    on the clip it declares (its `InputSpec`), with the configured ``model.*``: a
    failure there is a bug in vidray and keeps its traceback.
    """
    # Weights are read by the workers; here only shapes are built.
    shapes_only = replace(
        cfg,
        model=replace(cfg.model, pretrained=""),
        detection=replace(cfg.detection, backbone_checkpoint=""),
    )
    spec = entry(cfg.model.name).input
    declared = replace(
        shapes_only,
        clip=replace(cfg.clip, T=spec.frames, crop=spec.crop),
        flow=replace(cfg.flow, L=spec.flow),
    )
    task = task_of(cfg)
    with torch.device("meta"):
        build_model(declared, num_classes=num_classes)(*task.example(declared, device="meta"))
        model = build_model(shapes_only, num_classes=num_classes)
        try:
            logits = model(*task.example(cfg, device="meta"))
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VidrayError(
                f"model {cfg.model.name!r} cannot take clips of T={cfg.clip.T}, "
                f"crop={cfg.clip.crop}, flow.L={cfg.flow.L}: {reason}"
            ) from None
    if tuple(logits.shape) != (1, num_classes):
        raise VidrayError(
            f"model {cfg.model.name!r} gives outputs of shape {tuple(logits.shape)} for one "
            f"clip, not (1, {num_classes})"
        )
    return model


def steps_per_epoch(cfg: Config, train_windows: int) -> int:
    """Optimiser steps per epoch on each rank: one clip per window, split evenly."""
    batches = math.ceil(math.ceil(train_windows / cfg.train.workers) / cfg.train.batch_size)
    return max(1, math.ceil(batches / cfg.train.grad_accum))


def new_run_name(storage_path: str, model: str) -> str:
    """``<model>-<date>-<time>``, made unique under ``storage_path``: Ray Train resumes a
    run folder it finds, so two runs started in the same second must not share one.

    On a local ``storage_path`` the name's (empty) folder is created here, exclusively,
    so two runs started at once on one machine cannot both take it. An object store
    has no exclusive create; there a name is only checked to be free.
    """
    stamp = f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stamp, 1
    while not _claim(storage.join(storage_path, name)):
        n += 1
        name = f"{stamp}-{n}"
    return name


def _claim(run_dir: str) -> bool:
    """Whether ``run_dir`` was free; a local one is now created, as one atomic step."""
    if storage.is_uri(run_dir):
        return not storage.exists(run_dir)
    try:
        os.makedirs(run_dir)
    except FileExistsError:
        return False
    return True


def check_training(cfg: Config) -> Config:
    """``cfg`` checked against its data, with every path absolute (Ray workers run in
    other directories) and the clip parameters the model declares filled in.

    Everything a user can get wrong before any cluster work is found here in
    seconds, without Ray or MLflow: first what `check_settings` finds without torch
    (a missing or wrong ``train.data``, a negative rate, a clip longer than the
    stored windows, splits without windows or labels), then an unknown model
    argument, a clip the model cannot take, a checkpoint that cannot be resumed.
    """
    cfg, info = check_settings(cfg)
    cfg = resolve_inputs(cfg)
    check_data(cfg, info)
    return cfg


@contextlib.contextmanager
def stop_signals_abort_training() -> Iterator[None]:
    """Around ``TorchTrainer.fit()``: SIGTERM, where the program treats it as Ctrl-C
    (the CLI does, for job managers), does what Ctrl-C does during a fit; afterwards
    both signals get their handlers back.

    During a fit, Ctrl-C runs Ray Train's handler, which aborts the run (workers
    stopped, the checkpoints kept) and raises SystemExit; a plain KeyboardInterrupt
    would leave the run training on. Ray never restores the handler it installs, so
    a Ctrl-C after the fit would do nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # a Tune trial: Tune handles the signals, and Ray installs no handler
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def like_ctrl_c(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signum, frame)

    if before[signal.SIGTERM] is signal.default_int_handler:
        signal.signal(signal.SIGTERM, like_ctrl_c)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def checkpoint_path(run_dir: str, checkpoint: Any) -> str:
    """Where a checkpoint Ray reports lies, as the user names it: under ``run_dir``
    (Ray's own path drops the scheme of a URI such as ``s3://``)."""
    return storage.join(run_dir, Path(checkpoint.path).name)


def interrupted(run_dir: str, *, epochs: int, resumed_from: str) -> Interrupted:
    """What an interrupted run kept, and how to continue: the last checkpoint Ray
    registered in ``run_dir`` (it keeps the latest on disk), or the one the run
    resumed from when it registered none. If Ray's record cannot be read (storage
    down, a record half written), the line still says where the checkpoints are."""
    from ray.train import Result

    try:
        latest = Result.from_path(run_dir)
        epoch = latest.metrics["epoch"] if latest.checkpoint is not None else None
    except RuntimeError:  # no run directory or no checkpoint record yet
        latest = epoch = None
    except Exception as exc:  # storage, pyarrow, Ray: the user gets one line whatever failed
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Interrupted(
            f"interrupted; the checkpoints are under {run_dir} (its record of them could not "
            f"be read: {reason}); resume with train.resume_from=<the last epoch_NNN folder there>"
        )
    if latest is None or latest.checkpoint is None:
        if resumed_from:
            return Interrupted(
                f"interrupted before the first epoch of this run ended; no new checkpoint; "
                f"resume with train.resume_from={resumed_from}"
            )
        return Interrupted(
            "interrupted before the first epoch ended; no checkpoint was saved; start the run again"
        )
    path = checkpoint_path(run_dir, latest.checkpoint)
    return Interrupted(
        f"interrupted after epoch {epoch}/{epochs}; last checkpoint {path}; "
        f"resume with train.resume_from={path}"
    )


@dataclass(frozen=True)
class TrainingPlan:
    """What a run will do, settled before Ray Train starts (`plan_training`, no Ray)."""

    cfg: Config  # checked, paths absolute, the model's clip filled in
    task: Task
    info: dict[str, Any]  # the data's dataset.yaml
    windows: dict[str, int]  # per split
    run_name: str
    run_dir: str  # Ray Train's: <train.storage_path>/<run_name>
    steps_per_epoch: int
    tags: dict[str, str]  # of the MLflow run


def plan_training(cfg: Config, tags: dict[str, str] | None = None) -> TrainingPlan:
    """``cfg`` checked against its data (`check_training`), and the run it makes: its
    name (a new folder under ``train.storage_path`` unless ``train.run_name`` is set),
    its MLflow tags and its optimiser steps per epoch."""
    cfg = check_training(cfg)
    info = read_dataset_info(cfg.train.data)
    windows = labeled_split_counts(cfg, info)
    run_name = cfg.train.run_name or new_run_name(cfg.train.storage_path, cfg.model.name)
    tags = {tracking.TASK_TAG: "train", **(tags or {})}
    if cfg.train.resume_from:
        # A resumed run is a new MLflow run (its params, e.g. train.epochs, may differ)
        # whose metrics continue at the next epoch; the tag links it to the first.
        tags[tracking.RESUMED_FROM_TAG] = cfg.train.resume_from
    return TrainingPlan(
        cfg=cfg,
        task=task_of(cfg),
        info=info,
        windows=windows,
        run_name=run_name,
        run_dir=storage.join(cfg.train.storage_path, run_name),
        steps_per_epoch=steps_per_epoch(cfg, windows["train"]),
        tags=tags,
    )


def run_training(
    cfg: Config,
    *,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[Any] = (),
    run_id: str = "",
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.train.data``; needs a running Ray.

    ``tags`` go on the MLflow run (a sweep nests its trials with
    ``mlflow.parentRunId``); ``callbacks`` are Ray Train callbacks (a Tune trial
    passes the one that reports each epoch to Tune). ``run_id``: an MLflow run this
    training continues, still RUNNING, instead of opening one (a PBT trial keeps one
    run across its restarts; the run keeps its params and tags). Raises `Interrupted` on Ctrl-C.
    """
    plan = plan_training(cfg, tags)
    uri = tracking.tracking_uri(plan.cfg.mlflow)
    tracking.check_reachable(uri)
    run_id = run_id or open_run(plan, uri)
    t0 = time.monotonic()
    status = "FAILED"
    try:
        result = fit(plan, uri, run_id, callbacks)
        trained = record(plan, result, uri, run_id, seconds=time.monotonic() - t0)
        status = "FINISHED"
        return trained
    except KeyboardInterrupt:
        status = "KILLED"
        raise interrupted(
            plan.run_dir, epochs=plan.cfg.train.epochs, resumed_from=plan.cfg.train.resume_from
        ) from None
    finally:
        tracking.end_run(uri, run_id, status=status)


def open_run(plan: TrainingPlan, uri: str) -> str:
    """The run's MLflow run, with its config, its data and the cluster it has as params."""
    import ray

    run_id = tracking.start_run(plan.cfg, uri=uri, run_name=plan.run_name, tags=plan.tags)
    data = tracking.training_data_params(
        plan.info, plan.windows, steps_per_epoch=plan.steps_per_epoch
    )
    tracking.log_params(uri, run_id, {**data, **tracking.resource_params(ray.cluster_resources())})
    return run_id


def worker_reports(uri: str, run_id: str) -> Any:
    """A Ray Train callback that logs every worker's own report of an epoch to the run, as
    ``worker/<rank>/train/clips`` and ``worker/<rank>/time/epoch_s`` (step: the epoch):
    rank 0 logs the run's metrics, and Tune sees rank 0's report only."""
    from ray.train import UserCallback

    class _WorkerReports(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
            keys = (tracking.WORKER_CLIPS, tracking.EPOCH_SECONDS)
            values = {
                tracking.worker_metric(rank, key): report[key]
                for rank, report in enumerate(metrics)
                for key in keys
                if key in report
            }
            if values:
                tracking.log_metrics(uri, run_id, values, step=int(metrics[0]["epoch"]))

    return _WorkerReports()


def fit(plan: TrainingPlan, uri: str, run_id: str, callbacks: Sequence[Any]) -> Any:
    """Ray Train's run of `train_loop_per_worker` on the plan's data; its `Result`.
    Ctrl-C (and SIGTERM, where it means Ctrl-C) aborts it as KeyboardInterrupt."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg, task = plan.cfg, plan.task
    clock = start_epoch_clock()  # ends with its last handle, the trainer's
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "task": task,
            "classes": plan.info["classes"],
            "dataset": plan.info,
            "tracking_uri": uri,
            "run_id": run_id,
            "steps_per_epoch": plan.steps_per_epoch,
            # Ray Train V2 refuses TorchTrainer(resume_from_checkpoint=...)
            # (deprecated, ray#49454): the loop loads it on a first start.
            "resume_from": cfg.train.resume_from,
            "epoch_clock": clock,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=plan.run_name,
            storage_path=cfg.train.storage_path,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=[worker_reports(uri, run_id), *callbacks],
            # The best by the rule and the latest (the resume point), whatever the
            # ties: see vidray.train.selection.
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            # Worker group start-up and resource requests are INFO: shown with --verbose.
            logging_config=LoggingConfig(log_level=cfg.ray.log_level.upper()),
        ),
        datasets={
            "train": task.dataset(cfg, "train", train=True, clock=clock),
            "val": task.dataset(cfg, cfg.train.val_split, train=False),
        },
        dataset_config=data_config(cfg),
    )
    try:
        with stop_signals_abort_training():
            return trainer.fit()
    except SystemExit as exc:  # Ray Train's Ctrl-C handler, after aborting the run
        raise KeyboardInterrupt from exc


def data_config(cfg: Config) -> Any:
    """How the workers read: only the training set is split; rank 0 reads all of val
    (video accuracy and frame-mAP need every clip of the split)."""
    from ray.train import DataConfig

    ingest = DataConfig.default_ingest_options()
    # Blocks in order make a one-worker CPU run repeat its numbers exactly (train.seed).
    # Nothing else can: several workers take blocks as they come, and GPU kernels are
    # not bitwise deterministic. There, the order would only cost throughput: a slow
    # read task holds back every block behind it.
    ingest.preserve_order = cfg.train.workers == 1 and not cfg.train.use_gpu
    return DataConfig(
        datasets_to_split=["train"], execution_options={"train": ingest, "val": ingest}
    )


def record(
    plan: TrainingPlan, result: Any, uri: str, run_id: str, *, seconds: float
) -> TrainResult:
    """The best checkpoint by the task's rule (`select_best`), logged to the MLflow run
    with the config and the task's tables; what the command reports."""
    best, best_metrics = select_best(result.best_checkpoints, plan.task.metric)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(plan.cfg.to_yaml())
        tracking.log_artifact(uri, run_id, config_file)
        for table in plan.task.tables(best_metrics, Path(tmp)):
            tracking.log_artifact(uri, run_id, table)
    with best.as_directory() as directory:
        tracking.log_artifact(uri, run_id, directory, "checkpoint")
        publish.log_model(
            plan.cfg.train.task, uri, run_id, directory, plan.cfg.train.register_model
        )
    return TrainResult(
        run_id=run_id,
        tracking_uri=uri,
        checkpoint=checkpoint_path(plan.run_dir, best),
        last_checkpoint=checkpoint_path(plan.run_dir, result.checkpoint),
        metrics=best_metrics,
        num_classes=len(plan.info["classes"]),
        seconds=seconds,
        metric=plan.task.metric,
    )
