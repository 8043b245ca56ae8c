"""Searchers that propose a sweep's trials one by one from the results so far.

``sweep.search: optuna`` (Tune's `OptunaSearch`, TPE) and ``hyperopt``
(`HyperOptSearch`, TPE) read the same ``space:`` as grid and random sweeps, and
keep its conditional keys: a key that means nothing for a trial (``model.fusion``
for anything but two_stream, a key whose ``when`` does not hold) is neither
sampled nor logged.

- Optuna's space is define-by-run: the deciding keys (``model.name`` and any a
  ``when`` names) are drawn first, then each other key only where it applies.
- Hyperopt's space is a tree fixed up front: one branch per combination of the
  deciding keys' values (which must then be ``grid`` or ``choice``), each branch
  holding the keys that apply to it, under labels of its own.

Both start with ``sweep.random_starts`` random trials, then propose from the
results. `Numbered` checks each proposal before Tune starts it and gives it the
trial config every sweep trial has, ``{"index": i, "overrides": {...}}``, with
indices in the order of proposal.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from vidray.errors import VidrayError
from vidray.tune.report import record_refused
from vidray.tune.space import Dimension, Sweep, applies, deciding_keys, ordered_dimensions

_BRANCH = "branch"  # hyperopt's label of the choice between branches
MAX_REFUSED_IN_A_ROW = 100  # proposals refused one after another before the sweep gives up
Refusal = Callable[[dict[str, Any]], "str | None"]  # why `vidray train` refuses a trial


def make_searcher(sweep: Sweep, *, refusal: Refusal, record: Path) -> Searcher:
    """The searcher ``sweep.search`` names, over the sweep's space, seeded; proposals
    ``refusal`` refuses are told to it as failed and recorded in ``record``."""
    searchers = {"optuna": _optuna, "hyperopt": _hyperopt}
    if sweep.sweep.search not in searchers:
        raise ValueError(f"sweep.search={sweep.sweep.search} has no searcher")
    return Numbered(searchers[sweep.sweep.search](sweep), refusal=refusal, record=record)


def _optuna(sweep: Sweep) -> Searcher:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=sweep.sweep.seed, n_startup_trials=sweep.sweep.random_starts
    )
    settings = sweep.sweep
    space = DefineByRun(sweep)
    return OptunaSearch(space=space, metric=settings.metric, mode=settings.mode, sampler=sampler)


class DefineByRun:
    """Optuna's space of a sweep: each key drawn after the keys that decide whether it
    applies, and only where it does. A class, not a closure, so that Tune can save the
    searcher with it."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def __call__(self, trial: Any) -> None:
        drawn: dict[str, Any] = {}
        for dim in ordered_dimensions(self.sweep):
            if applies(dim, drawn, self.sweep.base):
                drawn[dim.key] = _suggest(trial, dim)


def _suggest(trial: Any, dim: Dimension) -> Any:
    """One key drawn by an Optuna trial, under the key's own name."""
    if dim.kind in ("grid", "choice"):
        return trial.suggest_categorical(dim.key, list(dim.values))
    low, high = dim.values
    if dim.kind == "randint":
        return trial.suggest_int(dim.key, low, high - 1)  # high excluded, as in `expand`
    return trial.suggest_float(dim.key, low, high, log=dim.kind == "loguniform")


def _hyperopt(sweep: Sweep) -> Searcher:
    from ray.tune.search.hyperopt import HyperOptSearch

    keys = deciding_keys(sweep)
    deciding = [d for d in ordered_dimensions(sweep) if d.key in keys]
    others = [d for d in ordered_dimensions(sweep) if d.key not in keys]
    branches = []
    for values in itertools.product(*(d.values for d in deciding)):
        fixed = {d.key: v for d, v in zip(deciding, values, strict=True)}
        suffix = f"#{len(branches)}" if deciding else ""
        drawn = {d.key: _hp(d, d.key + suffix) for d in others if applies(d, fixed, sweep.base)}
        branches.append({**fixed, **drawn})
    if len(branches) == 1:
        space = {"overrides": branches[0]}
    else:
        from hyperopt import hp

        space = {"overrides": hp.choice(_BRANCH, branches)}
    return HyperOptSearch(
        space=space,
        metric=sweep.sweep.metric,
        mode=sweep.sweep.mode,
        n_initial_points=sweep.sweep.random_starts,
        random_state_seed=sweep.sweep.seed,
    )


def _hp(dim: Dimension, label: str) -> Any:
    """One key as a hyperopt expression."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    if dim.kind in ("grid", "choice"):
        return hp.choice(label, list(dim.values))
    low, high = dim.values
    if dim.kind == "uniform":
        return hp.uniform(label, low, high)
    if dim.kind == "loguniform":
        return hp.loguniform(label, math.log(low), math.log(high))
    return scope.int(hp.quniform(label, low, high - 1, 1))  # randint: high excluded


class Numbered(Searcher):
    """A searcher whose proposals are sweep trial configs: ``{"index": i, "overrides":
    proposal}``, numbered in the order proposed. Tune saves the count with the searcher's
    state, so a resumed sweep goes on counting.

    Each proposal is checked first, in the driver, as ``vidray train`` checks a config
    (``refusal`` gives the reason, or None). One it refuses is told to the searcher as
    a failure (a result worse than any real one) and recorded with its number and
    reason (a line of JSON in ``record``, which outlives the driver); the searcher then
    proposes again. So every trial Tune starts can run, and none costs a trial's
    start-up to fail.
    """

    def __init__(self, searcher: Searcher, *, refusal: Refusal, record: Path) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.refusal = refusal
        self.record = Path(record)
        self.proposed = 0
        self._asked: dict[str, str] = {}  # Tune's trial id -> the id the searcher knows it by

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        # The searchers are made with the sweep's metric and mode: they say no to these.
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        reason = ""
        for attempt in range(MAX_REFUSED_IN_A_ROW):
            asked = trial_id if attempt == 0 else f"{trial_id}-{attempt}"
            proposal = self.searcher.suggest(asked)
            if not isinstance(proposal, dict):
                return proposal  # None (nothing now) or Searcher.FINISHED
            overrides = proposal.get("overrides", proposal)  # hyperopt's tree, or optuna's keys
            overrides = {key: _plain(value) for key, value in overrides.items()}
            index, self.proposed = self.proposed, self.proposed + 1
            reason = self.refusal(overrides)
            if reason is None:
                self._asked[trial_id] = asked
                return {"index": index, "overrides": overrides}
            # Told as a result worse than any real one: TPE (optuna's and hyperopt's)
            # leaves failed trials out of its model and would propose the same again.
            worst = -math.inf if self.searcher.mode == "max" else math.inf
            self.searcher.on_trial_complete(asked, result={self.searcher.metric: worst})
            record_refused(self.record, index, overrides, reason)
        raise VidrayError(
            f"sweep.search={self.searcher.__class__.__name__}: {MAX_REFUSED_IN_A_ROW} proposals "
            f"in a row that vidray train refuses (the last: {reason}); narrow the space"
        )

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(self._asked.get(trial_id, trial_id), result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        asked = self._asked.pop(trial_id, trial_id)
        self.searcher.on_trial_complete(asked, result=result, error=error)

    # Tune saves a wrapper (anything with a ``searcher``) by its state, and the searcher
    # it wraps by itself.
    def get_state(self) -> dict[str, Any]:
        return {"proposed": self.proposed, "asked": dict(self._asked)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.proposed, self._asked = state["proposed"], dict(state["asked"])


def _plain(value: Any) -> Any:
    """A drawn value as the config takes it: numpy scalars as Python numbers."""
    return value.item() if hasattr(value, "item") else value
