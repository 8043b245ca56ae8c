"""Population-based training (``sweep.scheduler: pbt``): Tune's scheduler, and how a trial
continues from the checkpoint of the trial it exploits.

Every ``sweep.pbt.interval`` epochs a trial in the bottom ``sweep.pbt.quantile`` of the
population (by ``sweep.metric``) exploits one of the top share: it stops, takes that
trial's overrides with the ``sweep.pbt.mutations`` keys perturbed (a float times 0.8 or
1.2, a list value moved to a neighbour, or either drawn anew from its ``space:``
distribution), and starts again from that trial's last checkpoint (model, optimiser and
LR-schedule state; the new values take effect from its next step).

Tune can hand a trial only a checkpoint it was told of, so a PBT trial reports each
epoch's Ray Train checkpoint to Tune itself (`run_pbt_trial`), and a restarted trial
reads it back (``tune.get_checkpoint()``): its own last one after a pause or a
``--resume``, the donor's after an exploit. Each start from a Tune checkpoint is a Ray
Train run of its own, named by that checkpoint (``<sweep>-trial002-from-trial001-
checkpoint_000003``): the trial's earlier run would resume its own weights. The trial's
MLflow run goes on across these starts and records each exploit (`record_start`).
"""

from __future__ import annotations

import functools
import json
import random
import threading
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from vidray import storage, tracking
from vidray.checkpoints import META_FILE
from vidray.config import Config
from vidray.errors import VidrayError
from vidray.train.driver import open_run, plan_training, run_training
from vidray.tune.trial import index_of

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

    from vidray.tune.space import Dimension, Sweep
    from vidray.tune.sweep import SweepPlan

# Distributions PBT can perturb: a float times a factor, a list value shifted or drawn.
FLOAT_KINDS = ("uniform", "loguniform")
LIST_KINDS = ("choice", "grid")


def check_pbt(sweep: Sweep) -> None:
    """A one-line error for PBT settings that cannot run: a mutation that is no float or
    list key of the space, or one of the model (a checkpoint fits one model only)."""
    settings = sweep.sweep
    if settings.scheduler != "pbt":
        return
    if settings.search not in ("grid", "random"):
        raise VidrayError(
            f"sweep.scheduler=pbt evolves a fixed population: it takes sweep.search grid or "
            f"random, not {settings.search}"
        )
    pbt = settings.pbt
    if pbt.interval < 1 or not 0 < pbt.quantile <= 0.5 or not pbt.mutations:
        raise VidrayError(
            "sweep.pbt needs interval >= 1, 0 < quantile <= 0.5 and at least one mutation"
        )
    dims = {dim.key: dim for dim in sweep.space}
    for key in pbt.mutations:
        dim = dims.get(key)
        if dim is None or dim.kind not in FLOAT_KINDS + LIST_KINDS:
            found = "not in space:" if dim is None else f"{dim.kind} in space:"
            raise VidrayError(
                f"sweep.pbt.mutations: {key} is {found}; PBT perturbs keys of the space with "
                f"a {', '.join(FLOAT_KINDS)} range or a {' or '.join(LIST_KINDS)} list"
            )
        if key.startswith("model.") or dim.when:
            raise VidrayError(
                f"sweep.pbt.mutations: {key} cannot change during a trial (a trial continues "
                "another's checkpoint, which holds one model): mutate optim.*, train.* keys"
            )


def population_based_training(plan: SweepPlan) -> TrialScheduler:
    """Tune's PBT over ``sweep.pbt``: epochs as time, mutations from the space, seeded."""
    sweep, settings = plan.sweep, plan.sweep.sweep
    check_pbt(sweep)
    rng = np.random.default_rng(settings.seed)
    mutations = {
        dim.key: _mutation(dim, rng) for dim in sweep.space if dim.key in settings.pbt.mutations
    }
    return _seeded_pbt()(
        sweep=sweep,
        seed=settings.seed,
        all_at_once=settings.max_concurrent_trials >= len(plan.trials),
        time_attr="training_iteration",  # one result per epoch
        perturbation_interval=settings.pbt.interval,
        quantile_fraction=settings.pbt.quantile,
        synch=settings.pbt.synch,
        # A trial's config is {"index", "overrides"}: the keys live in the overrides.
        hyperparam_mutations={"overrides": mutations},
    )


def _mutation(dim: Dimension, rng: Any) -> Any:
    """What PBT draws a key's new value from: the list, or the range (seeded)."""
    if dim.kind in LIST_KINDS:
        return list(dim.values)
    return functools.partial(_draw, dim, rng)


def _draw(dim: Dimension, rng: Any) -> Any:
    return dim.sample(rng)


@functools.cache
def _seeded_pbt() -> type:
    """The scheduler's class, made where a PBT sweep runs: importing this module (for
    `check_pbt`) imports nothing of Ray."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class _SeededPBT(PopulationBasedTraining):
        """`PopulationBasedTraining` whose choices (which top trial to copy, how to perturb
        its values) come from a generator seeded with ``sweep.seed``, and that never
        exploits at a trial's last epoch: a trial restarted there has nothing to train,
        and its checkpoint cannot be resumed (`check_resumable`)."""

        def __init__(self, *, sweep: Sweep, seed: int, all_at_once: bool, **pbt: Any) -> None:
            super().__init__(**pbt)
            self._sweep = sweep
            self._all_at_once = all_at_once
            self._random = random.Random(seed)

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            epochs = self._sweep.config(trial.config["overrides"]).train.epochs
            if result.get(self._time_attr, 0) >= epochs:
                return TrialScheduler.CONTINUE
            decision = super().on_trial_result(tune_controller, trial, result)
            # Tune's PBT pauses a trial whenever another waits (its fair share of a cluster
            # too small for the population), also one that waits only to restart after an
            # exploit. A paused trial's training starts over in a new process: when the
            # whole population runs at once, no trial needs to give way. (Synchronous PBT
            # pauses a trial to hold it at the interval until the others get there.)
            if decision == TrialScheduler.PAUSE and self._all_at_once and not self._synch:
                return TrialScheduler.CONTINUE
            return decision

        def _checkpoint_or_exploit(self, *args: Any, **kwargs: Any) -> None:
            # Tune's PBT draws from the global `random`; this one from its own stream.
            outside = random.getstate()
            random.setstate(self._random.getstate())
            try:
                super()._checkpoint_or_exploit(*args, **kwargs)
            finally:
                self._random.setstate(random.getstate())
                random.setstate(outside)

    return _SeededPBT


@functools.cache
def _forwarder() -> type:
    """A Ray Train callback that hands each epoch's metrics (rank 0's) and checkpoint to
    the trial function, which reports both to Tune (Tune's own `TuneReportCallback`
    reports the metrics only, and PBT can copy only a checkpoint Tune knows)."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def __init__(self, reports: Any) -> None:
            self._reports = reports

        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            self._reports.put((metrics[0].copy(), checkpoint))

    return ForwardReports


def run_pbt_trial(cfg: Config, *, plan: SweepPlan, index: int, tags: dict[str, str]) -> None:
    """A PBT trial: trains ``cfg`` from where Tune says (nothing, its own checkpoint, or
    the donor's after an exploit), reporting every epoch's metrics and checkpoint to
    Tune. Training runs in a thread of its own: Tune takes a checkpoint only from the
    trial function's ``tune.report``, and the trainer's callbacks run elsewhere."""
    from ray import tune
    from ray.util.queue import Queue

    cfg, run_id = _start(cfg, plan=plan, index=index, tags=tags, start=tune.get_checkpoint())
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    failed: list[BaseException] = []

    def train() -> None:
        try:
            run_training(cfg, tags=tags, callbacks=[_forwarder()(reports)], run_id=run_id)
        except BaseException as exc:  # raised again in the trial function, below
            failed.append(exc)
        finally:
            reports.put(None)

    thread = threading.Thread(target=train, name="vidray-pbt-training", daemon=True)
    thread.start()
    while (report := reports.get()) is not None:
        metrics, checkpoint = report
        if checkpoint is not None:
            checkpoint = tune.Checkpoint(checkpoint.path, filesystem=checkpoint.filesystem)
        tune.report(metrics, checkpoint=checkpoint)
    thread.join()
    if failed:
        raise failed[0]


def _start(
    cfg: Config, *, plan: SweepPlan, index: int, tags: dict[str, str], start: Any
) -> tuple[Config, str]:
    """The trial's config for this start (its Ray Train run, the checkpoint it resumes)
    and its MLflow run (the one it left RUNNING when Tune paused it, else a new one),
    where this start is recorded (`record_start`)."""
    name = f"{plan.sweep.sweep.name}-trial{index:03d}"
    source, meta = "", {}
    if start is not None:
        # Where Tune keeps it, as the user names it (a URI keeps its scheme).
        path = PurePosixPath(start.path)
        source = storage.join(plan.experiment, path.parent.name, path.name)
        name += f"-from-{path.parent.name}-{path.name}"
        with start.as_directory() as directory:
            meta = yaml.safe_load((Path(directory) / META_FILE).read_text())
    train = replace(cfg.train, run_name=name, storage_path=plan.trials_path, resume_from=source)
    cfg = replace(cfg, train=train)
    uri = plan.tracking_uri
    run_id = _running_run(uri, tags, index) if start is not None else ""
    run_id = run_id or open_run(plan_training(cfg, tags), uri)
    donor = index_of(str(PurePosixPath(source).parent)) if source else None
    record_start(
        uri,
        run_id,
        values={key: cfg.flat()[key] for key in plan.sweep.sweep.pbt.mutations},
        epoch=int(meta.get("epoch", 0)),
        donor=donor if donor != index else None,
        checkpoint=source,
    )
    return cfg, run_id


def _running_run(uri: str, tags: dict[str, str], index: int) -> str:
    """The trial's MLflow run that Tune's pause left RUNNING ("" if none: a sweep's
    ``--resume`` has ended those as KILLED, and the trial opens a new one)."""
    client = tracking.client(uri)
    parent = tags[tracking.PARENT_RUN_TAG]
    runs = client.search_runs(
        experiment_ids=[client.get_run(parent).info.experiment_id],
        filter_string=(
            f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent}' and "
            f"tags.`{tracking.TRIAL_TAG}` = '{index}' and attributes.status = 'RUNNING'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else ""


def record_start(
    uri: str,
    run_id: str,
    *,
    values: dict[str, Any],
    epoch: int,
    donor: int | None,
    checkpoint: str,
) -> None:
    """A start of a PBT trial in its MLflow run: the mutated keys' values from ``epoch``
    on (metrics ``pbt/<key>``, step: the epoch), and, where it exploits trial ``donor``,
    a tag ``vidray.pbt.exploit.<n>`` and ``pbt/from_trial`` at that epoch."""
    numbers = {
        tracking.pbt_value(key): float(value)
        for key, value in values.items()
        if isinstance(value, (int, float))
    }
    if donor is not None:
        numbers[tracking.PBT_FROM_TRIAL] = donor
        client = tracking.client(uri)
        tags = client.get_run(run_id).data.tags
        n = 1 + sum(key.startswith(tracking.PBT_EXPLOIT_TAG + ".") for key in tags)
        record = {"from_trial": donor, "epoch": epoch, "values": values, "checkpoint": checkpoint}
        client.set_tag(run_id, tracking.pbt_exploit_tag(n), json.dumps(record))
    if numbers:
        tracking.log_metrics(uri, run_id, numbers, step=epoch)
