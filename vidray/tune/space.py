"""A sweep file: the training config the trials share, the search space, the scheduler.

    extends: ../train/demo/_base.yaml      # what every trial trains with
    sweep:                                 # how the sweep runs (`SweepConfig`)
      name: fusion-demo
      metric: val/video_top1
    space:                                 # what varies, by dotted config key
      model.name: {grid: [single_frame, early_fusion, two_stream]}
      model.fusion: {grid: [avg, conv]}    # expanded for two_stream only
      clip.T: {choice: [4, 8]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}

How the trials are drawn is ``sweep.search``. ``grid`` and ``random`` fix the
list up front (`expand`): the Cartesian product of the ``grid`` keys with
``sweep.num_samples`` draws of the random keys (``choice``, ``uniform``,
``loguniform``, ``randint``) for each point, or ``num_samples`` draws of every
key; seeded, and each trial checked before Ray starts, so a bad one (a clip
longer than the stored windows) fails the sweep at once. ``optuna`` and
``hyperopt`` propose ``num_samples`` trials one by one from the results so far
(`vidray.tune.search`); each is checked in the driver before it runs. Under
any search, a key that does not apply to a trial's model (a knob its family lacks, such as
``model.fusion`` for anything but two_stream, or ``flow.L`` for an RGB model) is
left out of that trial instead of being sampled as noise; a key may also name
its own condition with ``when: {model.name: [two_stream]}``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vidray import tracking
from vidray.config import Config, RayConfig, apply_overrides, build_dataclass, read_config_file
from vidray.errors import VidrayError
from vidray.models import arguments, available, entry

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCHERS = ("optuna", "hyperopt")  # searches whose trials are proposed as the sweep runs


@dataclass(frozen=True)
class PBTConfig:
    """The ``sweep.pbt:`` section (``sweep.scheduler: pbt``)."""

    interval: int = 1  # epochs between two exploit/explore steps of a trial
    # space keys PBT perturbs (each a float or choice key of `space:`)
    mutations: list[str] = field(default_factory=lambda: ["optim.lr"])
    quantile: float = 0.25  # the bottom share exploits the top share
    # every trial waits at each interval until the whole population is there, and only
    # then do the bottom exploit the top: the same seed gives the same exploits on any
    # machine, at the cost of a restart (from its checkpoint) per trial and interval
    synch: bool = False


@dataclass(frozen=True)
class SweepConfig:
    """The ``sweep:`` section."""

    name: str = "sweep"  # the Tune experiment and the MLflow parent run
    metric: str = tracking.VAL_VIDEO_TOP1  # what the scheduler, searcher and ranking use
    mode: Literal["max", "min"] = "max"
    # grid: grid keys crossed, random keys drawn num_samples times per point; random:
    # num_samples trials, every key drawn; optuna, hyperopt: num_samples trials, each
    # proposed by the searcher from the results so far
    search: Literal["grid", "random", "optuna", "hyperopt"] = "grid"
    num_samples: int = 1
    random_starts: int = 3  # trials optuna and hyperopt draw at random before proposing
    max_concurrent_trials: int = 1
    # seconds from the first epoch a trial reports; then every trial stops (0 = no limit)
    time_budget_s: float = 0.0
    scheduler: Literal["asha", "fifo", "median", "pbt"] = "asha"
    grace_period: int = 1  # epochs every trial gets before ASHA or median stopping may stop it
    reduction_factor: int = 2  # ASHA keeps the top 1/reduction_factor at each rung
    # median: a trial is compared with the others' median once at least this many trials
    # have reached its epoch (before that, every trial continues)
    median_min_trials: int = 3
    pbt: PBTConfig = field(default_factory=PBTConfig)
    seed: int = 0  # of the random draws and the searchers: the same file gives the same trials
    output: str = ""  # trials table, plot, best config ("" = sweeps/<name>)
    resume: bool = False  # continue an interrupted sweep of the same name


@dataclass(frozen=True)
class Dimension:
    """One key of the search space."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # grid / choice values, or (low, high)
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(map(str, self.values))
        cond = "".join(f" when {k} in {list(v)}" for k, v in self.when.items())
        return f"{self.kind}({args}){cond}"

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind in ("choice", "grid"):  # a grid key of a random search: drawn too
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return int(rng.integers(low, high))  # randint: high excluded, as in Tune


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the shared config, the space, and how to run it."""

    base: dict[str, Any]  # config sections every trial starts from (validated)
    space: tuple[Dimension, ...]
    sweep: SweepConfig
    source: str = ""  # the sweep file, for the parent run
    overrides: tuple[str, ...] = ()  # as given on the command line, to repeat on --resume

    def config(self, trial: dict[str, Any]) -> Config:
        """The full training config of one trial (its dotted overrides applied)."""
        return Config.from_dict(_with(self.base, trial))

    @property
    def ray(self) -> RayConfig:
        """Where the sweep's Ray runs (``ray.*`` of the shared config)."""
        return self.config({}).ray

    def max_epochs(self) -> int:
        """The most epochs any trial of the sweep can train."""
        most = self.config({}).train.epochs
        for dim in self.space:
            if dim.key == "train.epochs":
                most = (
                    max(most, *dim.values)
                    if dim.kind != "randint"
                    else max(most, dim.values[1] - 1)
                )
        return most

    def output_dir(self) -> Path:
        return Path(self.sweep.output or Path("sweeps") / self.sweep.name)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep file; ``sweep.key=value`` overrides go to the sweep section, the
    rest to the shared training config."""
    data = read_config_file(Path(path))
    sweep_data = data.pop("sweep", None) or {}
    space_data = data.pop("space", None)
    ours = [o for o in overrides or [] if o.startswith("sweep.")]
    base = apply_overrides(data, [o for o in overrides or [] if not o.startswith("sweep.")])
    sweep_data = apply_overrides({"sweep": sweep_data}, ours)["sweep"]
    sweep = build_dataclass(SweepConfig, sweep_data, "sweep.")
    Config.from_dict(base)  # a typo in the shared part fails here, naming the key
    if not space_data or not isinstance(space_data, dict):
        raise VidrayError(f"{path}: 'space' must map config keys to distributions")
    space = tuple(_dimension(key, spec) for key, spec in space_data.items())
    if sweep.num_samples < 1:
        raise VidrayError(f"sweep.num_samples={sweep.num_samples}: needs at least 1")
    if sweep.reduction_factor < 2 or sweep.grace_period < 1:
        raise VidrayError("sweep.reduction_factor must be >= 2 and sweep.grace_period >= 1")
    if sweep.median_min_trials < 1:
        raise VidrayError(f"sweep.median_min_trials={sweep.median_min_trials}: needs at least 1")
    if sweep.random_starts < 1:
        raise VidrayError(f"sweep.random_starts={sweep.random_starts}: needs at least 1")
    parsed = Sweep(
        base=base, space=space, sweep=sweep, source=str(path), overrides=tuple(overrides or ())
    )
    _check_searchable(parsed)
    from vidray.tune.pbt import check_pbt  # the module that knows Tune's PBT

    check_pbt(parsed)
    return parsed


def _check_searchable(sweep: Sweep) -> None:
    """Hyperopt's space is a tree with a branch per value of each deciding key, so those
    keys must have a list of values."""
    if sweep.sweep.search != "hyperopt":
        return
    for dim in sweep.space:
        if dim.key in deciding_keys(sweep) and dim.kind not in ("grid", "choice"):
            raise VidrayError(
                f"space.{dim.key}: under sweep.search=hyperopt a key that others depend on "
                f"must be a grid or choice, not {dim.kind} (or use sweep.search=optuna)"
            )


def _dimension(key: str, spec: Any) -> Dimension:
    where = f"space.{key}"
    section, _, name = key.partition(".")
    if not name:
        raise VidrayError(f"{where}: keys are dotted config names, e.g. clip.T")
    if not isinstance(spec, dict):
        raise VidrayError(f"{where}: expected {{grid|choice|...: values}}, got {spec!r}")
    spec = dict(spec)
    when = spec.pop("when", None) or {}
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS]
    if unknown or len(kinds) != 1:
        raise VidrayError(
            f"{where}: expected exactly one of {', '.join(DISTRIBUTIONS)} (and optionally "
            f"'when'), got {', '.join(map(str, spec)) or 'nothing'}"
        )
    kind = kinds[0]
    values = spec[kind]
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            raise VidrayError(f"{where}: {kind} needs a non-empty list of values")
    else:
        ok = isinstance(values, list) and len(values) == 2
        if not ok or not all(isinstance(v, (int, float)) for v in values):
            raise VidrayError(f"{where}: {kind} needs [low, high], got {values!r}")
        if not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            raise VidrayError(f"{where}: {kind} needs 0 < low < high, got {values!r}")
    if not isinstance(when, dict) or not all(
        isinstance(v, (list, str, int)) for v in when.values()
    ):
        raise VidrayError(f"{where}: 'when' maps keys to a value or a list of values")
    conditions = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    # Every value must be one the training config takes: an unknown key or a
    # wrong type fails here, named as in a config file (with the closest key).
    for value in values:
        try:
            Config.from_dict({section: {name: value}})
        except VidrayError as exc:
            raise VidrayError(f"{where}: {exc}") from None
    return Dimension(key=key, kind=kind, values=tuple(values), when=conditions)


def _with(base: dict[str, Any], trial: dict[str, Any]) -> dict[str, Any]:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in trial.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    return data


def applies(dimension: Dimension, trial: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether ``dimension`` means anything for a trial that has settled ``trial``."""
    config = _with(base, trial)
    for key, allowed in dimension.when.items():
        section, _, name = key.partition(".")
        if (config.get(section) or {}).get(name) not in allowed:
            return False
    model = (config.get("model") or {}).get("name") or Config().model.name
    if model not in available():
        return True  # the trial's validation names the unknown model
    section, _, name = dimension.key.partition(".")
    if section == "model" and name not in ("name", "pretrained"):
        return name in arguments(model)
    if dimension.key == "flow.L":
        return entry(model).input.flow > 0
    return True


def deciding_keys(sweep: Sweep) -> set[str]:
    """The keys whether other keys apply depends on: ``model.name``, and any a
    ``when`` names."""
    return {"model.name"} | {key for d in sweep.space for key in d.when}


def ordered_dimensions(sweep: Sweep) -> list[Dimension]:
    """The space with the deciding keys first (in file order), so that each key is
    drawn after the keys that decide whether it applies."""
    deciding = deciding_keys(sweep)
    return sorted(sweep.space, key=lambda d: d.key not in deciding)


def expand(sweep: Sweep) -> list[dict[str, Any]]:
    """Every trial of a grid or random sweep, as dotted overrides of the shared config,
    in run order.

    ``grid``: the grid keys crossed, then ``sweep.num_samples`` draws of the random
    keys for each point. ``random``: ``sweep.num_samples`` trials, every key drawn
    (a grid key as a choice). A key is drawn only where it applies (`applies`).
    """
    rng = np.random.default_rng(sweep.sweep.seed)
    ordered = ordered_dimensions(sweep)
    crossed = sweep.sweep.search == "grid"
    points: list[dict[str, Any]] = [{}]
    for dim in (d for d in ordered if crossed and d.kind == "grid"):
        expanded = []
        for point in points:
            if applies(dim, point, sweep.base):
                expanded += [{**point, dim.key: value} for value in dim.values]
            else:
                expanded.append(point)
        points = expanded
    drawn = [d for d in ordered if not crossed or d.kind != "grid"]
    trials = []
    for point, _ in itertools.product(points, range(sweep.sweep.num_samples)):
        trial = dict(point)
        for dim in drawn:
            if applies(dim, trial, sweep.base):
                trial[dim.key] = dim.sample(rng)
        trials.append({d.key: trial[d.key] for d in sweep.space if d.key in trial})
    return trials


def describe_space(sweep: Sweep) -> dict[str, str]:
    """The space as MLflow params of the parent run: ``space.<key>`` -> distribution."""
    return {f"space.{d.key}": d.describe() for d in sweep.space}


def trial_name(trial: dict[str, Any]) -> str:
    """A short readable label, e.g. ``model.name=c3d clip.T=8``."""
    return " ".join(f"{k}={_short(v)}" for k, v in trial.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
