"""Which of the checkpoints Ray kept becomes the run's best (what `vidray evaluate`
and the MLflow `checkpoint` artifact get), and the score that makes Ray keep it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from vidray.errors import VidrayError
from vidray.train.driver import new_run_name
from vidray.train.selection import BestSoFar, select_best

METRIC = "val/video_top1"


def kept(*epochs: tuple[int, float, float]) -> list[tuple[str, dict]]:
    """(epoch, accuracy, val loss) -> the (checkpoint, metrics) pairs Ray returns."""
    return [
        (f"checkpoint_{epoch}", {"epoch": epoch, METRIC: accuracy, "val/loss": loss})
        for epoch, accuracy, loss in epochs
    ]


def test_higher_val_accuracy_wins_over_lower_loss():
    best, metrics = select_best(kept((4, 1.0, 0.9), (7, 0.875, 0.2)), METRIC)
    assert best == "checkpoint_4" and metrics["epoch"] == 4


def test_a_tie_in_accuracy_goes_to_the_lower_val_loss():
    # The failure this rule fixes: epoch 5 reached 1.0 first, epoch 8 matched it
    # with a lower loss and generalised better; the first of the tie was taken.
    assert select_best(kept((5, 1.0, 0.61), (8, 1.0, 0.35)), METRIC)[0] == "checkpoint_8"
    assert select_best(kept((5, 1.0, 0.35), (8, 1.0, 0.61)), METRIC)[0] == "checkpoint_5"


def test_a_full_tie_goes_to_the_later_epoch():
    assert select_best(kept((2, 0.5, 0.7), (6, 0.5, 0.7)), METRIC)[0] == "checkpoint_6"


def test_a_missing_loss_ranks_below_any_loss_among_equals():
    pairs = [("a", {"epoch": 3, METRIC: 0.75}), ("b", {"epoch": 1, METRIC: 0.75, "val/loss": 2.0})]
    assert select_best(pairs, METRIC)[0] == "b"


def test_no_checkpoint_is_a_one_line_error():
    with pytest.raises(VidrayError, match="no checkpoint"):
        select_best([], METRIC)


def test_a_nan_metric_or_loss_never_wins():
    pairs = kept((1, float("nan"), 0.1), (2, 0.5, float("nan")), (3, 0.5, 0.9))
    assert select_best(pairs, METRIC)[0] == "checkpoint_3"


def scores(*epochs: tuple[int, float, float]) -> list[int]:
    """The score each epoch reports to Ray, in order."""
    best = BestSoFar(METRIC)
    return [best.update(metrics) for _, metrics in kept(*epochs)]


def test_only_a_new_best_by_the_rule_scores_and_it_outscores_every_earlier_one():
    # Three epochs tie at the top; the first has the lowest loss. Ranked by accuracy,
    # Ray (ties by recency) kept epochs 3 and 4 and deleted epoch 2, the rule's pick.
    assert scores((1, 0.5, 0.9), (2, 0.75, 0.4), (3, 0.75, 0.6), (4, 0.75, 0.5)) == [1, 2, 0, 0]
    # A later best always outscores the one it beats, a worse epoch never does.
    assert scores((1, 0.5, 0.9), (2, 0.75, 0.4), (3, 0.75, 0.4), (4, 0.5, 0.1)) == [1, 2, 3, 0]
    assert scores((1, float("nan"), 0.1), (2, 0.25, float("nan")), (3, 0.25, 2.0)) == [1, 2, 3]


def test_the_best_so_far_is_what_select_best_picks():
    epochs = [(1, 0.5, 0.9), (2, 0.75, 0.4), (3, 0.75, 0.6), (4, 0.75, 0.4), (5, 0.5, 0.1)]
    best = BestSoFar(METRIC)
    for _, metrics in kept(*epochs):
        best.update(metrics)
    assert best.best == select_best(kept(*epochs), METRIC)[1]
    assert best.best["epoch"] == 4


def test_a_generated_run_name_never_reuses_a_run_folder(tmp_path):
    """Ray Train continues the run it finds in a folder: runs started in the same second,
    also at once from several threads, get a folder each (taken when named)."""
    storage_path = tmp_path / "runs"  # created by the first name
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(lambda _: new_run_name(str(storage_path), "simple3d"), range(8)))
    names.append(new_run_name(str(storage_path), "simple3d"))
    assert len(set(names)) == len(names)
    assert all(name.startswith("simple3d-") for name in names)
    assert sorted(p.name for p in storage_path.iterdir()) == sorted(names)
