"""Population-based training: a trial that cannot learn takes a better trial's checkpoint
and values, and trains on from there; its MLflow run records the exploit."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_tune import TINY, ended, sweep_data, sweep_runs  # noqa: F401  (a fixture)

from vidray import tracking
from vidray.cli import run_command
from vidray.errors import VidrayError
from vidray.tune.pbt import check_pbt
from vidray.tune.space import load_sweep

EPOCHS = 4
LRS = [0.03, 0.01, 0.0]  # trial i trains with LRS[i]; 0 cannot learn


def write_pbt_sweep(path, space: dict, pbt: dict, **sweep) -> None:
    """A PBT sweep file as a user writes one: no data, storage or tracking URI."""
    shared = {
        **TINY,
        "train": {**TINY["train"], "epochs": EPOCHS, "cpus_per_worker": 0.33},
        "mlflow": {"experiment": "sweeps"},
    }
    settings = {"name": "pbt", "scheduler": "pbt", "pbt": pbt, **sweep}
    path.write_text(yaml.safe_dump({**shared, "sweep": settings, "space": space}, sort_keys=False))


def history(client: MlflowClient, run, key: str) -> list:
    """A metric's values in the order they were logged (a PBT trial logs an epoch again
    when it continues from an earlier epoch of another trial)."""
    metrics = client.get_metric_history(run.info.run_id, key)
    return sorted(metrics, key=lambda m: (m.timestamp, m.step))


@pytest.mark.slow
def test_a_trial_that_cannot_learn_takes_the_best_trials_checkpoint_and_trains_on(
    sweep_data,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Three trials at once, ranked by ``train/lr`` (their order is known before they
    run): trial 2 (lr 0) is the bottom one, trial 0 (lr 0.03) the top one. Synchronous
    PBT holds every trial at epoch 2 until all three are there (so which trials exist and
    have reported does not depend on the machine's speed), then trial 2 exploits trial 0:
    it takes trial 0's epoch-2 checkpoint and its lr (with sweep.seed 5 PBT's first
    exploit moves 0.03 "left", off the list: it stays 0.03), and trains epochs 3.. again.

    The weights came across, and the optimiser, schedule and RNG state: with them and
    the same lr, trial 2's next epoch repeats trial 0's epoch 3 exactly (one CPU worker
    reading blocks in order repeats a run; trial 0 too went on from that checkpoint), the
    same train and val loss. From there it learns: its last train loss is below every one
    it had with lr 0. Trial 1, in neither quantile, and trial 0 exploit nothing.
    """
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep_data, "data")
    write_pbt_sweep(
        tmp_path / "sweep.yaml",
        {"optim.lr": {"grid": LRS}},
        {"interval": 2, "mutations": ["optim.lr"], "quantile": 0.25, "synch": True},
        metric="train/lr",
        mode="max",
        max_concurrent_trials=3,
        seed=5,
    )
    assert run_command("tune", ["--config", "sweep.yaml", "--data", "data"]) == 0
    client, _, runs = sweep_runs("pbt")
    assert sorted(runs) == [0, 1, 2]  # one run per trial, across its restarts
    assert all(r.info.status == "FINISHED" and ended(r) for r in runs.values())

    top, bad = runs[0], runs[2]
    exploit = json.loads(bad.data.tags[tracking.pbt_exploit_tag(1)])
    assert exploit["from_trial"] == 0 and exploit["values"] == {"optim.lr": 0.03}
    epoch = exploit["epoch"]
    assert epoch == 2
    assert not any(
        key.startswith(tracking.PBT_EXPLOIT_TAG) for r in (runs[0], runs[1]) for key in r.data.tags
    )
    assert exploit["checkpoint"].startswith(str(tmp_path.resolve() / "runs" / "pbt" / "trial000"))
    exploits = history(client, bad, tracking.PBT_FROM_TRIAL)
    assert (exploits[0].step, exploits[0].value) == (epoch, 0)
    assert [(m.step, m.value) for m in history(client, bad, "pbt/optim.lr")][:2] == [
        (0, 0.0),
        (epoch, 0.03),
    ]

    # Its own epochs first (lr 0), then epochs E+1..EPOCHS from trial 0's checkpoint,
    # with the new lr in the optimiser. Its own may include epoch E+1 too: training runs
    # on in its thread while Tune handles epoch E's report, until the pause reaches it.
    lrs = history(client, bad, tracking.TRAIN_LR)
    own = sum(m.value == 0 for m in lrs)
    assert own >= epoch and all(m.value == 0 for m in lrs[:own])
    assert [(m.step, m.value) for m in lrs[own:]] == [
        (e, pytest.approx(0.03)) for e in range(epoch + 1, EPOCHS + 1)
    ]
    for key in (tracking.TRAIN_LOSS, tracking.VAL_LOSS):
        donor = {m.step: m.value for m in history(client, top, key)}
        resumed = history(client, bad, key)[own]
        assert resumed.step == epoch + 1
        assert resumed.value == pytest.approx(donor[epoch + 1], rel=1e-5), key
    losses = [m.value for m in history(client, bad, tracking.TRAIN_LOSS)]
    assert losses[-1] < min(losses[:own])


def test_pbt_mutates_only_float_or_list_keys_of_the_space(tmp_path):
    path = tmp_path / "sweep.yaml"
    space = {"optim.lr": {"grid": LRS}, "clip.T": {"randint": [4, 9]}}
    for mutations, named in [(["optim.weight_decay"], "not in space"), (["clip.T"], "randint")]:
        write_pbt_sweep(path, space, {"mutations": mutations})
        with pytest.raises(VidrayError, match=f"sweep.pbt.mutations: .*{named}"):
            check_pbt(load_sweep(path))
    write_pbt_sweep(path, space, {"mutations": ["optim.lr"]})
    check_pbt(load_sweep(path))
