"""What a sweep leaves behind: the trials table, the sweep plot, the best config."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidray.config import Config
from vidray.errors import user_error
from vidray.tune.space import Sweep, trial_name
from vidray.tune.trial import index_of


@dataclass
class TrialRow:
    index: int
    overrides: dict[str, Any]
    status: str  # finished | stopped early | failed | invalid | not run
    curve: list[float] = field(default_factory=list)  # the metric after each epoch
    # The last epoch the trial reported. More than len(curve) where Tune kept only part
    # of the results: a trial --resume continued (the restarted attempt's), or one PBT
    # moved onto another trial's checkpoint (which may be epochs ahead or behind).
    epochs: int = 0
    best: float | None = None
    run_id: str = ""  # the trial's MLflow run
    error: str = ""
    # Tune's last result of the trial says done: it returned, or the scheduler stopped
    # it on that result. The time budget (or an interrupt) cuts a trial between two
    # results, or before its first, and leaves no such mark.
    stopped_on_result: bool = False

    @property
    def label(self) -> str:
        return trial_name(self.overrides) or "(shared config)"


def record_refused(record: Path, index: int, overrides: dict[str, Any], reason: str) -> None:
    """Add a proposal the sweep refused to its record (one JSON line), which outlives the
    driver: a resumed sweep's table still shows it."""
    with record.open("a") as f:
        f.write(json.dumps({"index": index, "overrides": overrides, "reason": reason}) + "\n")


def refused_trials(record: Path) -> list[dict[str, Any]]:
    """The proposals a sweep refused, as `record_refused` wrote them."""
    if not record.is_file():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def proposed_trials(grid: Any, refused: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The overrides of each trial a searcher proposed, by index: from Tune's results (a
    trial Tune cut before its first report, whose result has no config: {}) and the
    proposals the sweep refused."""
    proposed = {index_of(r.path): (r.config or {}).get("overrides", {}) for r in grid}
    proposed |= {r["index"]: r["overrides"] for r in refused}
    count = max((i + 1 for i in proposed if i is not None), default=0)
    return [proposed.get(index, {}) for index in range(count)]


def trial_rows(
    grid: Any,
    trials: list[dict[str, Any]],
    sweep: Sweep,
    runs: dict[int, Any],
    *,
    refused: dict[int, str] | None = None,
) -> list[TrialRow]:
    """One row per trial from Tune's ResultGrid and the trials' MLflow runs (the latest
    run of each trial, by index), best first (trials without a result last). ``refused``:
    the proposals the sweep did not start, by index, with the reason.

    Whatever state Tune left a trial in gives a row: never created or never started
    (no result, or one without config or metrics), cut at any point, or failed.
    """
    sign = 1 if sweep.sweep.mode == "max" else -1
    results = {index_of(result.path): result for result in grid}
    rows = []
    for index, overrides in enumerate(trials):
        if refused and index in refused:
            rows.append(TrialRow(index, overrides, "invalid", error=refused[index]))
        else:
            rows.append(_row(index, overrides, results.get(index), runs.get(index), sweep))
    rows.sort(key=lambda r: (r.best is None, -sign * (r.best or 0.0), r.index))
    return rows


def _row(index: int, overrides: dict[str, Any], result: Any, run: Any, sweep: Sweep) -> TrialRow:
    """A trial's row from its Tune result and its MLflow run (either may be None)."""
    metric, sign = sweep.sweep.metric, (1 if sweep.sweep.mode == "max" else -1)
    frame = result.metrics_dataframe if result is not None else None
    last = (result.metrics or {}) if result is not None else {}
    curve = []
    if frame is not None and metric in frame:
        curve = [float(v) for v in frame[metric] if not math.isnan(float(v))]
    epochs = int(last.get("epoch") or len(curve))
    error = result.error if result is not None else None
    if error is not None:
        status = "failed"
    elif not curve and run is None:
        status = "not run"
    elif (
        epochs >= sweep.config(overrides).train.epochs
        and run is not None
        and run.info.status == "FINISHED"
    ):
        status = "finished"
    else:
        # By the scheduler or the time budget, possibly before its first epoch, or
        # after its last one but before its run had logged its checkpoint and ended.
        status = "stopped early"
    return TrialRow(
        index=index,
        overrides=overrides,
        status=status,
        curve=curve,
        epochs=epochs,
        best=(max(curve, key=lambda v: sign * v) if curve else None),
        run_id=run.info.run_id if run is not None else "",
        error=_reason(error) if error is not None else "",
        stopped_on_result=bool(last.get("done")),
    )


def stopped_by(row: TrialRow, scheduler: str, budget_reached: bool) -> str:
    """What stopped a trial that stopped early, where that is known ("" where not):
    ASHA and the median rule stop a trial on one of its results, the time budget cuts
    one between two."""
    if row.stopped_on_result:
        return scheduler if scheduler in ("asha", "median") else ""
    return "time_budget" if budget_reached else ""


def _reason(error: BaseException) -> str:
    """Why a trial failed, as one plain line: the user's mistake when Ray's wrappers
    hold one (`user_error`), else the last line of the wrapped error."""
    cause = user_error(error)
    if cause is not None:
        return str(cause)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[-1] if lines else type(error).__name__)


def _columns(sweep: Sweep) -> list[str]:
    return [d.key for d in sweep.space]


def format_table(rows: list[TrialRow], sweep: Sweep) -> str:
    """The trials as aligned text, best first."""
    keys = _columns(sweep)
    header = ["rank", "trial", "status", "epochs", sweep.sweep.metric, *keys]
    lines = [header]
    for rank, row in enumerate(rows, 1):
        values = [_cell(row.overrides.get(k, "-")) for k in keys]
        best = "-" if row.best is None else f"{row.best:.3f}"
        lines.append([str(rank), str(row.index), row.status, str(row.epochs), best, *values])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_table(path: Path, rows: list[TrialRow], sweep: Sweep) -> Path:
    keys = _columns(sweep)
    metric = sweep.sweep.metric
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        fixed = ["rank", "trial", "status", "epochs", f"best {metric}", f"last {metric}"]
        writer.writerow([*fixed, *keys, "mlflow_run_id", "error"])
        for rank, row in enumerate(rows, 1):
            writer.writerow(
                [rank, row.index, row.status, row.epochs, row.best]
                + [row.curve[-1] if row.curve else None]
                + [row.overrides.get(k, "") for k in keys]
                + [row.run_id, row.error]
            )
    return path


def write_best_config(path: Path, sweep: Sweep, best: TrialRow, config: Config) -> Path:
    """The best trial's full training ``config`` (its paths absolute), which
    ``vidray train --config`` takes as is."""
    header = (
        f"# Best trial of sweep {sweep.sweep.name!r} by {sweep.sweep.metric} "
        f"({best.best:.4f}): {best.label}\n"
        f"# Train it again (e.g. longer, on more data): vidray train --config {path.name}\n"
    )
    path.write_text(header + config.to_yaml())
    return path


def _plot_key(ax: Any, dim: Any, scored: list[TrialRow], metric: str) -> None:
    """Each scored trial's best ``metric`` against its value of one swept key (hollow:
    stopped early); categories on a labelled axis, numbers on a linear or log one."""
    from matplotlib.ticker import MaxNLocator, NullFormatter

    points = [(r.overrides[dim.key], r) for r in scored if dim.key in r.overrides]
    numeric = dim.kind in ("uniform", "loguniform", "randint") or all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in points
    )
    if numeric:
        xs = [float(v) for v, _ in points]
    else:
        categories = [str(v) for v in dim.values]
        xs = [categories.index(str(v)) for v, _ in points]
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(categories) - 0.5)
    for x, (_, row) in zip(xs, points, strict=True):
        finished = row.status == "finished"
        ax.scatter(x, row.best, s=36, facecolors="C0" if finished else "none", edgecolors="C0")
    if dim.kind == "loguniform":
        ax.set_xscale("log")
        # Under two decades matplotlib labels the minor ticks too, over one another.
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif numeric and all(isinstance(v, int) for v, _ in points):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # clip.T 4, 6, 8: no 4.5
    ax.set_xlabel(dim.key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def best_so_far(rows: list[TrialRow], mode: str) -> list[tuple[int, float]]:
    """The best metric of the sweep after each scored trial, in the order the trials
    were proposed (by index): what a searcher had found by then. Trials without a
    result (failed, not run) add no point."""
    better = max if mode == "max" else min
    series: list[tuple[int, float]] = []
    for row in sorted(rows, key=lambda r: r.index):
        if row.best is not None:
            best = row.best if not series else better(series[-1][1], row.best)
            series.append((row.index, best))
    return series


def _plot_trials(ax: Any, rows: list[TrialRow], sweep: Sweep) -> None:
    """Each trial's best metric against its index (the order the searcher proposed
    the trials; hollow: stopped early), and the best so far."""
    from matplotlib.ticker import MaxNLocator

    for row in rows:
        if row.best is not None:
            fill = "C0" if row.status == "finished" else "none"
            ax.scatter(row.index, row.best, s=36, facecolors=fill, edgecolors="C0")
    series = best_so_far(rows, sweep.sweep.mode)
    if series:
        indices, bests = zip(*series, strict=True)
        ax.plot(indices, bests, drawstyle="steps-post", color="C1", label="best so far")
        ax.legend(fontsize=8, loc="best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in the order proposed)")
    ax.set_ylabel(sweep.sweep.metric)
    ax.set_title("trials over time")
    ax.grid(alpha=0.3)


def _plot_families(ax: Any, scored: list[TrialRow], sweep: Sweep) -> None:
    """The best trial of each model family: its metric over epochs."""
    from matplotlib.ticker import MaxNLocator

    families: dict[str, TrialRow] = {}
    for row in scored:  # rows are best first: the first of a family is its best
        family = str(sweep.config(row.overrides).model.name)
        families.setdefault(family, row)
    for family, row in families.items():
        ax.plot(range(1, len(row.curve) + 1), row.curve, marker="o", label=family)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.sweep.metric)
    ax.set_title("best trial per family")
    ax.grid(alpha=0.3)
    if families:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def plot_sweep(path: Path, rows: list[TrialRow], sweep: Sweep) -> Path:
    """One panel per swept key (each trial's best metric against its value), one of the
    trials over time (best metric against trial index, with the best so far) and one of
    the best trial of each model family's metric over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = sweep.sweep.metric
    # A key that took one value in every trial it applies to says nothing here.
    dims = [
        d
        for d in sweep.space
        if len({str(r.overrides[d.key]) for r in rows if d.key in r.overrides}) > 1
    ]
    # The last panel is wider: its legend sits to the right of the curves.
    widths = [1.0] * (len(dims) + 1) + [1.4]
    fig, axes = plt.subplots(
        1,
        len(widths),
        figsize=(4.2 * sum(widths), 3.8),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    scored = [r for r in rows if r.best is not None]
    for ax, dim in zip(axes[0], dims, strict=False):
        _plot_key(ax, dim, scored, metric)
    _plot_trials(axes[0][-2], rows, sweep)
    _plot_families(axes[0][-1], scored, sweep)
    fig.suptitle(f"sweep {sweep.sweep.name}: {len(rows)} trials (hollow: stopped early)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
