"""The sweep driver: a sweep file -> Ray Tune trials of the training pipeline -> MLflow.

plan = check_sweep(sweep)                    # no Ray: every trial expanded, checked
                                             # and its paths made absolute
parent = MLflow run (space, scheduler)       # one per sweep
Tuner(trial -> run_training(..., TuneReportCallback), ASHA).fit()
                                             # one nested MLflow run per trial
summarize -> trials.csv, sweep.png, best_config.yaml on the parent run

Every trial trains with `vidray.train.driver.run_training`, the code path of
``vidray train``: the same shards (clips are derived at read time, never
re-decoded), the same params and metric names, so MLflow's compare view lines
trials up with plain training runs. Tune runs each trial in a directory of its
own, so every path and the tracking URI are made absolute here, in the driver:
a relative ``--data`` and the default ``sqlite:///mlflow.db`` mean what they
mean where the user typed the command. The trial list and the parent run id are
kept in ``<output>/sweep.json``; ``sweep.resume=true`` (``--resume``) restores
the Tune experiment with ``Tuner.restore``: finished trials are not re-run, an
interrupted one continues from its last epoch checkpoint. A sweep stopped before
Tune saved any state resumes as a new Tune experiment under its recorded parent
run. Ctrl-C or SIGTERM stops Tune between two steps with its state saved, ends
the runs as KILLED and raises `Interrupted` with how to resume.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import vidray.detect  # registers train.task=detect: a sweep may train detectors
import vidray.predict  # noqa: F401  (a trial logs its best checkpoint as an MLflow model)
from vidray import storage, tracking
from vidray.config import Config
from vidray.errors import Interrupted, VidrayError
from vidray.train.driver import check_training
from vidray.tune.report import (
    TrialRow,
    format_table,
    plot_sweep,
    proposed_trials,
    refused_trials,
    stopped_by,
    trial_rows,
    write_best_config,
    write_table,
)
from vidray.tune.space import SEARCHERS, Sweep, describe_space, expand, trial_name

STATE_FILE = "sweep.json"
REFUSED_FILE = "refused.jsonl"
TUNE_STATE = "experiment_state-*.json"  # what Tune saves in its experiment, and restores
# The trial function only waits on its trainer. Tune refuses an empty resource
# bundle, and any CPU it held would be missing for the trial's Ray Data readers
# (a sweep on 2 cores then hangs); a byte of memory is a bundle that holds no CPU,
# so a trial gets exactly the resources `vidray train` would.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
# Config keys that name a file or a folder (or a URI), made absolute in the driver.
PATH_KEYS = (
    "train.data",
    "train.storage_path",
    "train.resume_from",
    "ingest.input",
    "ingest.output",
    "eval.checkpoint",
    "eval.data",
    "eval.output",
    "detect.video",
    "detect.checkpoint",
    "detect.proposals",
    "detect.output",
    "detect.render",
    "detection.eval_label_map",
    "detection.backbone_checkpoint",
)
# Keys that take a local file or a registry name (torchvision weights, COCO_V1):
# a path only where that file exists.
FILE_OR_NAME_KEYS = ("model.pretrained", "flow.raft_weights", "detect.detector")


@dataclass
class SweepResult:
    rows: list[TrialRow]
    metric: str
    output: Path
    parent_run_id: str
    tracking_uri: str

    def report(self) -> str:
        count = Counter(r.status for r in self.rows)
        line = (
            f"tune: {len(self.rows)} trials: {count['finished']} finished, "
            f"{count['stopped early']} stopped early, "
            f"{count['failed'] + count['not run']} failed or not run"
        )
        if count["invalid"]:
            line += f", {count['invalid']} proposed that vidray train refuses"
        lines = [line]
        best = next((r for r in self.rows if r.best is not None), None)
        if best:
            lines.append(f"tune: best {self.metric} {best.best:.3f}: {best.label}")
        lines.append(f"tune: table, plot and best config in {self.output}")
        lines.append(
            f"tune: MLflow parent run {self.parent_run_id}: "
            f"{tracking.ui_command(self.tracking_uri)}"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class SweepPlan:
    """A sweep checked before Ray starts, with everything settled in the driver."""

    sweep: Sweep
    # each trial's dotted overrides, as `expand` gives them ([] where a searcher proposes)
    trials: list[dict[str, Any]]
    settled: dict[str, Any]  # the shared config's paths and tracking URI, absolute
    base: Config  # the shared config, with those (the parent run's params)
    tracking_uri: str
    root: str  # train.storage_path, absolute: Tune's experiments live here
    output: Path  # trials table, plot, best config and sweep.json, absolute
    parent_run_id: str = ""  # the parent run a resumed sweep continues
    restore: bool = False  # Tune saved the experiment's state: --resume restores it

    @property
    def experiment(self) -> str:
        return f"{self.root.rstrip('/')}/{self.sweep.sweep.name}"

    @property
    def trials_path(self) -> str:
        """Where the trials' Ray Train runs keep their checkpoints."""
        return f"{self.root.rstrip('/')}/{self.sweep.sweep.name}_trials"

    @property
    def state_file(self) -> Path:
        return self.output / STATE_FILE

    @property
    def count(self) -> int:
        """How many trials the sweep runs."""
        return len(self.trials) or self.sweep.sweep.num_samples

    @property
    def refused_file(self) -> Path:
        """The proposals of a searcher that `vidray train` refuses, one JSON line each."""
        return self.output / REFUSED_FILE

    def refusal(self, overrides: dict[str, Any]) -> str | None:
        """Why ``vidray train`` refuses a trial, or None where it can run."""
        try:
            check_training(self.trial_config(overrides))
        except VidrayError as exc:
            return str(exc)
        return None

    def trial_config(self, overrides: dict[str, Any]) -> Config:
        """A trial's full config: its overrides of the shared config, with every path
        and the tracking URI absolute (Tune runs it in a directory of its own; they
        were settled in the driver)."""
        return self.sweep.config({**self.settled, **overrides})


def absolute_paths(cfg: Config) -> dict[str, str]:
    """The path keys of ``cfg`` that are set, as dotted overrides with absolute values."""
    flat = cfg.flat()
    paths = {key: _absolute(key, flat[key]) for key in (*PATH_KEYS, *FILE_OR_NAME_KEYS)}
    return {key: path for key, path in paths.items() if path != flat[key]}


def _absolute(key: str, value: Any) -> Any:
    """A path key's value made absolute where the user typed it (a file-or-name key only
    where that file exists); any other value as it is."""
    if not value or not isinstance(value, str):
        return value
    if key in PATH_KEYS:
        return storage.resolve(value)
    if key in FILE_OR_NAME_KEYS and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def _absolute_space(sweep: Sweep) -> Sweep:
    """The sweep with the path values of its space made absolute, so that what a trial
    draws means what it meant in the driver."""
    space = tuple(
        replace(d, values=tuple(_absolute(d.key, v) for v in d.values))
        if d.kind in ("grid", "choice")
        else d
        for d in sweep.space
    )
    return replace(sweep, space=space)


def check_sweep(sweep: Sweep) -> SweepPlan:
    """Everything about a sweep that needs no cluster, before Ray starts: every trial
    checked as ``vidray train`` checks its config (`check_training`), every path and
    the tracking URI made absolute where the user typed the command (Tune runs each
    trial in a directory of its own), and the sweep's state (``--resume`` needs one,
    a new sweep must not find one). Imports nothing of Ray."""
    drawn = sweep.sweep.search in SEARCHERS  # its trials are proposed as it runs
    trials = [] if drawn else expand(sweep)
    shared = sweep.config({})
    if not all(sweep.config(trial).train.data for trial in trials or [{}]):
        raise VidrayError("train.data is not set: pass --data DIR (an ingest output)")
    uri = tracking.tracking_uri(shared.mlflow)
    tracking.check_reachable(uri)
    root = storage.resolve(shared.train.storage_path)
    settled = {**absolute_paths(shared), "mlflow.tracking_uri": uri}
    plan = SweepPlan(
        sweep=_absolute_space(sweep),
        trials=[{k: _absolute(k, v) for k, v in trial.items()} for trial in trials],
        settled=settled,
        base=sweep.config(settled),
        tracking_uri=uri,
        root=root,
        output=sweep.output_dir().resolve(),
    )
    parent, restore = _check_state(plan)
    for index, trial in enumerate(trials):
        try:
            check_training(plan.trial_config(trial))
        except VidrayError as exc:
            raise VidrayError(f"trial {index} ({trial_name(trial)}): {exc}") from None
    return replace(plan, parent_run_id=parent, restore=restore)


def _check_state(plan: SweepPlan) -> tuple[str, bool]:
    """The parent run of the sweep ``--resume`` continues ("" for a new sweep), and
    whether Tune saved a state of it to restore.

    A new sweep finds nothing of an earlier one of its name: not its state file, its
    Tune experiment, nor its trials' Ray Train runs, which a trial of the same index
    would continue from their checkpoints (fixed run names, so that --resume finds
    them). A sweep stopped after it recorded itself and before Tune saved a state
    (Ctrl-C, or a failure, during Ray's start-up) resumes with none to restore.
    """
    name = plan.sweep.sweep.name
    if not plan.sweep.sweep.resume:
        found = [str(plan.state_file)] if plan.state_file.exists() else []
        found += [path for path in (plan.experiment, plan.trials_path) if storage.exists(path)]
        if found:
            raise VidrayError(
                f"sweep {name!r} exists ({', '.join(found)}): pass --resume to continue it, "
                "delete all of these to start it over, or set sweep.name"
            )
        return "", False
    if not plan.state_file.is_file():
        raise VidrayError(
            f"sweep {name!r} has nothing to resume ({plan.state_file} is missing): "
            "run it without --resume"
        )
    state = json.loads(plan.state_file.read_text())
    if state["trials"] != plan.trials or state.get("space") != _searched(plan.sweep):
        raise VidrayError(
            f"the sweep file now gives other trials than {plan.state_file} records: resume "
            "with the file it started with, or start a new sweep.name"
        )
    saved = [f for f in storage.list_files(plan.experiment) if "/" not in f]
    return state["parent_run_id"], bool(fnmatch.filter(saved, TUNE_STATE))


def run_sweep(sweep: Sweep) -> SweepResult:
    """Run (or, with ``sweep.resume``, continue) a sweep; needs a running Ray.

    Ctrl-C or SIGTERM raises `Interrupted` once Tune has saved its state and the
    parent run and the runs of the trials it stopped have ended as KILLED.
    """
    plan = check_sweep(sweep)
    settings, uri = sweep.sweep, plan.tracking_uri
    parent = _open_parent(plan)
    how = f"{plan.count} trials"
    if settings.search in SEARCHERS:
        how += f" proposed by {settings.search}"
    print(f"tune: {how}, scheduler {settings.scheduler}; parent run {parent}")
    t0 = time.monotonic()
    status = "FAILED"
    try:
        grid = _fit(plan, parent)
        rows = _record(plan, parent, grid, seconds=time.monotonic() - t0)
        failed = [r for r in rows if r.status == "failed"]
        if failed:
            # Everything is written and logged; the exit status still says that part
            # of the sweep is missing, so a Ray job of it shows FAILED.
            raise VidrayError(
                f"{len(failed)} of {len(rows)} trials failed (trial {failed[0].index}: "
                f"{failed[0].error or 'see the Ray logs'}): see {plan.output / 'trials.csv'}"
            )
        status = "FINISHED"
        return SweepResult(
            rows=rows,
            metric=settings.metric,
            output=plan.output,
            parent_run_id=parent,
            tracking_uri=uri,
        )
    except KeyboardInterrupt:
        # A second Ctrl-C, or one before Tune could take it: Tune's state is the one
        # it saved last (at most TUNE_GLOBAL_CHECKPOINT_S old), or none.
        status = "KILLED"
        raise _interrupted(plan, parent) from None
    except Interrupted:
        status = "KILLED"  # `_interrupted` ended the parent run
        raise
    finally:
        if status != "KILLED":
            tracking.end_run(uri, parent, status=status)


def _fit(plan: SweepPlan, parent: str) -> Any:
    """Tune's run of the trials: its ResultGrid. Ctrl-C or SIGTERM stops Tune between
    two steps with its state saved, then raises `Interrupted`."""
    # Tune saves its experiment state at most this often; a driver killed just after a
    # trial ends must find that trial recorded as done on --resume. Set for this sweep
    # only: the process may run other Tune experiments after it.
    saves = {}
    if not storage.is_uri(plan.root) and "TUNE_GLOBAL_CHECKPOINT_S" not in os.environ:
        saves = {"TUNE_GLOBAL_CHECKPOINT_S": "2"}
    with _stop_on_signal() as stopped, _environ(saves):
        grid = _tuner(plan, parent).fit()
    if stopped.is_set():
        raise _interrupted(plan, parent)
    return grid


def _register_best(uri: str, name: str, best: TrialRow) -> None:
    """With ``train.register_model=NAME``, a new version of NAME from the best trial's
    MLflow model; a trial stopped early logged none (a warning line says so)."""
    if not name:
        return
    from vidray.predict.pyfunc import register

    try:
        tags = tracking.client(uri).get_run(best.run_id).data.tags
        if tracking.MODEL_URI_TAG not in tags:
            raise VidrayError("it logged no MLflow model: it was stopped before its end")
        print(f"tune: best trial {best.index} registered as {register(uri, name, best.run_id)}")
    except Exception as exc:  # the sweep's results stand without it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(
            f"tune: warning: the best trial ({best.index}) was not registered as {name}: {reason}",
            file=sys.stderr,
        )


def _record(plan: SweepPlan, parent: str, grid: Any, *, seconds: float) -> list[TrialRow]:
    """The trials' rows, best first: every trial run ended with what stopped it, the
    table, plot and best config written and logged to the parent run, the table shown."""
    sweep, settings, uri = plan.sweep, plan.sweep.sweep, plan.tracking_uri
    # The latest run of each trial (a resumed trial has one per attempt).
    runs = {int(r.data.tags[tracking.TRIAL_TAG]): r for r in _trial_runs(uri, parent)}
    refused = refused_trials(plan.refused_file)
    trials = plan.trials or proposed_trials(grid, refused)
    rows = trial_rows(grid, trials, sweep, runs, refused={r["index"]: r["reason"] for r in refused})
    # Only the time budget ends a sweep with trials cut between two results or never
    # started (ASHA stops a trial on a result; an interrupt does not come here).
    cut = [
        r
        for r in rows
        if r.status == "not run" or (r.status == "stopped early" and not r.stopped_on_result)
    ]
    budget_reached = settings.time_budget_s > 0 and bool(cut)
    if budget_reached:
        unfinished = sum(r.status in ("stopped early", "not run") for r in rows)
        print(
            f"tune: time budget of {settings.time_budget_s:g} s reached: "
            f"{unfinished} of {len(rows)} trials stopped early or not run"
        )
        tracking.client(uri).set_tag(parent, tracking.BUDGET_TAG, "true")
    _mark_children(uri, rows, settings.scheduler, budget_reached)
    written = [
        write_table(plan.output / "trials.csv", rows, sweep),
        plot_sweep(plan.output / "sweep.png", rows, sweep),
    ]
    best = next((r for r in rows if r.best is not None), None)
    if best is not None:
        path = plan.output / "best_config.yaml"
        written.append(write_best_config(path, sweep, best, plan.trial_config(best.overrides)))
        best_value = {tracking.best_metric(settings.metric): best.best}
        tracking.log_metrics(uri, parent, best_value, step=0)
        _register_best(uri, sweep.config({}).train.register_model, best)
    for path in written:
        tracking.log_artifact(uri, parent, path)
    tracking.log_metrics(uri, parent, {tracking.SWEEP_SECONDS: seconds}, step=0)
    print(format_table(rows, sweep))
    return rows


def _open_parent(plan: SweepPlan) -> str:
    """The sweep's MLflow parent run: a new one, recorded in sweep.json, or the one a
    resumed sweep continues (running again; its trials' runs a killed driver left
    RUNNING are ended)."""
    uri, settings = plan.tracking_uri, plan.sweep.sweep
    if plan.parent_run_id:
        _close_interrupted(uri, plan.parent_run_id)
        tracking.client(uri).update_run(plan.parent_run_id, status="RUNNING")
        return plan.parent_run_id
    parent = tracking.start_run(
        plan.base, uri=uri, run_name=settings.name, tags={tracking.TASK_TAG: "tune"}
    )
    tracking.log_params(
        uri,
        parent,
        {
            **describe_space(plan.sweep),
            **{f"sweep.{k}": v for k, v in _flat(asdict(settings)).items() if k != "resume"},
            "sweep.trials": plan.count,
            "sweep.file": plan.sweep.source,
        },
    )
    plan.output.mkdir(parents=True, exist_ok=True)
    plan.refused_file.unlink(missing_ok=True)  # an earlier sweep's, deleted with its state
    state = {
        "parent_run_id": parent,
        "experiment": plan.experiment,
        "trials": plan.trials,
        "space": _searched(plan.sweep),
    }
    plan.state_file.write_text(json.dumps(state))
    return parent


def _searched(sweep: Sweep) -> dict[str, Any]:
    """What a resumed sweep must search as before: the space, and how it is searched."""
    settings = sweep.sweep
    how = {"search": settings.search, "num_samples": settings.num_samples, "seed": settings.seed}
    return {**describe_space(sweep), **how}


def _flat(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings dict as dotted keys (``pbt.interval``)."""
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tuner(plan: SweepPlan, parent: str) -> Any:
    """The Tune experiment of the sweep: new, or restored from its saved state."""
    from ray import tune

    from vidray.tune.budget import TimeBudget
    from vidray.tune.scheduler import make_scheduler
    from vidray.tune.search import make_searcher
    from vidray.tune.trial import run_trial, trial_dirname

    settings, trials = plan.sweep.sweep, plan.trials
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=plan, parent_run_id=parent),
        TRIAL_DRIVER_RESOURCES,
    )
    if plan.restore:
        return tune.Tuner.restore(
            plan.experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    if settings.search in SEARCHERS:
        searcher = make_searcher(plan.sweep, refusal=plan.refusal, record=plan.refused_file)
        param_space, samples = {}, settings.num_samples
    else:
        searcher, samples = None, 1
        param_space = {
            "index": tune.grid_search(list(range(len(trials)))),
            "overrides": tune.sample_from(lambda config: trials[config["index"]]),
        }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            search_alg=searcher,
            scheduler=make_scheduler(plan),
            num_samples=samples,
            max_concurrent_trials=settings.max_concurrent_trials,
            trial_dirname_creator=trial_dirname,
            # A stopped trial's process must end: Tune keeps a reusable one alive for
            # the next trial, and there the stopped trial's training thread went on,
            # holding its workers' CPUs and writing to its run (ending it FINISHED, or
            # leaving it RUNNING when the next trial killed it mid-way).
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=plan.root,
            stop=TimeBudget(settings.time_budget_s) if settings.time_budget_s else None,
        ),
    )


@contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM while Tune runs: Tune ends its loop between two steps, saves
    its experiment state (what --resume reads) and stops the trials; the event is set.

    A KeyboardInterrupt raised in the middle of a step would skip that save, and could
    leave the state file half written. Tune stops this way on SIGUSR1, with a handler
    each ``Tuner.fit`` installs; its own SIGINT handler is switched off so that
    SIGINT and SIGTERM take the same path. A signal before Tune's handler is in place,
    or a second one (stop now), raises KeyboardInterrupt.
    """
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped  # Python delivers signals to the main thread only
        return
    taken = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    before = {number: signal.getsignal(number) for number in taken}
    tune_log = logging.getLogger("ray.tune.tune")
    log_level = tune_log.level

    def stop(number: int, frame: Any) -> None:
        tune_listens = signal.getsignal(signal.SIGUSR1) is not before[signal.SIGUSR1]
        if stopped.is_set() or not tune_listens:
            raise KeyboardInterrupt
        stopped.set()
        # Tune's own lines about it name Tuner.restore; the sweep's names --resume.
        tune_log.setLevel(logging.ERROR)
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        with _environ({"TUNE_DISABLE_SIGINT_HANDLER": "1"}):
            yield stopped
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
        tune_log.setLevel(log_level)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while the block runs; what was there (or its absence)
    afterwards."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _interrupted(plan: SweepPlan, parent: str) -> Interrupted:
    """What an interrupted sweep kept and how to continue it, once the parent run and
    the trial runs that were still RUNNING have ended as KILLED.

    The line must come whatever state MLflow is in (a server gone, a locked database):
    where it cannot be updated or read, the line says so instead of the count.
    """
    options = [o for o in plan.sweep.overrides if not o.startswith("sweep.resume=")]
    arguments = shlex.join(["--config", plan.sweep.source, *options, "--resume"])
    # The command's name is not known here (vidray tune, python -m pipelines.tune).
    how = f"to continue, run the same command with --resume ({arguments})"
    try:
        _close_interrupted(plan.tracking_uri, parent)
        tracking.end_run(plan.tracking_uri, parent, status="KILLED")
        latest = {
            run.data.tags[tracking.TRIAL_TAG]: run for run in _trial_runs(plan.tracking_uri, parent)
        }
    except Exception as exc:  # whatever MLflow raised: the one line must still come
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Interrupted(f"interrupted (MLflow runs not updated: {first}); {how}")
    done = sum(run.info.status == "FINISHED" for run in latest.values())
    return Interrupted(f"interrupted: {done} of {plan.count} trials finished; {how}")


def _trial_runs(uri: str, parent: str) -> list[Any]:
    """The MLflow runs nested under ``parent``, oldest first."""
    client = tracking.client(uri)
    return client.search_runs(
        experiment_ids=[client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )


def _close_interrupted(uri: str, parent: str) -> None:
    """Trial runs left RUNNING (by an interrupt, or a killed driver) end as KILLED, so
    the UI shows none live."""
    for run in _trial_runs(uri, parent):
        if run.info.status == "RUNNING":
            tracking.client(uri).set_tag(run.info.run_id, tracking.INTERRUPTED_TAG, "true")
            tracking.client(uri).set_tag(run.info.run_id, tracking.TRIAL_STATUS_TAG, "interrupted")
            tracking.end_run(uri, run.info.run_id, status="KILLED")


def _mark_children(uri: str, rows: list[TrialRow], scheduler: str, budget_reached: bool) -> None:
    """Every trial run ends with a status and an end time, whatever stopped it: Tune
    stops a trial's process without letting `run_training` end its run. A run cut short
    names what cut it where that is known (`stopped_by`)."""
    client = tracking.client(uri)
    for row in rows:
        if not row.run_id:
            continue
        client.set_tag(row.run_id, tracking.TRIAL_STATUS_TAG, row.status)
        if row.status == "stopped early":
            stopper = stopped_by(row, scheduler, budget_reached)
            if stopper:
                client.set_tag(row.run_id, tracking.STOPPED_TAG, stopper)
            tracking.end_run(uri, row.run_id, status="KILLED")
        elif client.get_run(row.run_id).info.status == "RUNNING":
            tracking.end_run(uri, row.run_id, status="FAILED")
