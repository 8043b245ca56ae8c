"""A sweep's time budget, counted from the first epoch a trial reports.

Tune's own ``time_budget_s`` counts from its first step, so the start-up of the
first trial (its process, imports, Ray Train's workers, the first data) is spent
from the budget: a short budget could end a sweep before any trial trained, and
how fast the machine started a trial decided what a budget bought. Counted from
the first reported epoch, the budget is training time: a sweep with a budget
trains at least one epoch, on any machine. The clock starts again in each
session of a resumed sweep, as Tune's would.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.stopper import Stopper


class TimeBudget(Stopper):
    """Ends the sweep (running trials cut, no more started) ``seconds`` after the first
    result of any trial."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._since: float | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self._since is None:
            self._since = time.monotonic()
        return False  # the budget cuts the whole sweep, never one trial on its result

    def stop_all(self) -> bool:
        return self._since is not None and time.monotonic() - self._since >= self.seconds
