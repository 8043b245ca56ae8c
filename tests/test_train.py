"""Training on local Ray with a real MLflow store, read back through MlflowClient.

One two-worker run (`trained`) is shared by most tests here: a fit costs ~30 s
of fixed overhead on two cores. It runs with gradient accumulation, clipping,
label smoothing and a warm-up, so the replica check also covers DDP's no_sync.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from probe import Probe, install

from vidray import tracking
from vidray.checkpoints import load_checkpoint
from vidray.config import load_config
from vidray.errors import VidrayError
from vidray.train.driver import run_training
from vidray.train.evaluate import run_evaluation

TINY = [
    "model.name=simple3d",
    "model.width=8",
    "clip.T=4",
    "clip.stride=2",
    "clip.crop=48",
    "train.epochs=2",
    "train.batch_size=8",
    "train.workers=2",
    "train.cpus_per_worker=0.5",
]


def tiny_config(data: Path, tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            *TINY,
            f"train.data={data}",
            f"train.storage_path={tmp_path / 'runs'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *extra,
        ],
    )


KNOBS = [
    "train.grad_accum=2",
    "train.clip_grad_norm=1.0",
    "train.label_smoothing=0.1",
    "optim.schedule=cosine",
    "optim.warmup_epochs=0.5",
]


@pytest.fixture(scope="module")
def trained_with_probe(ray_local, motion_data, tmp_path_factory):
    """The tiny run, trained by the test probe (classify, and each rank's parameter
    hash before every step: tests/probe.py)."""
    tmp_path = tmp_path_factory.mktemp("train")
    probed = tmp_path / "probe"
    probed.mkdir()
    cfg = tiny_config(motion_data, tmp_path, "train.run_name=tiny-run", *KNOBS)
    with pytest.MonkeyPatch.context() as patch:
        install(patch, Probe(dir=str(probed)))
        return cfg, run_training(cfg), probed


@pytest.fixture(scope="module")
def trained(trained_with_probe):
    cfg, result, _ = trained_with_probe
    return cfg, result


@pytest.mark.slow
def test_two_worker_run_logs_params_metrics_and_artifacts_to_mlflow(trained):
    _, result = trained
    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-run"
    params = run.data.params
    assert params["model.name"] == "simple3d" and params["clip.T"] == "4"
    assert params["train.workers"] == "2"
    assert int(params["data.classes"]) == 4 and int(params["data.windows_train"]) > 0
    assert params["train.grad_accum"] == "2" and params["optim.schedule"] == "cosine"
    assert float(params["ray.cpus"]) == 2 and float(params["ray.gpus"]) == 0
    # How the data was stored, from its dataset.yaml (not the config's ingest defaults,
    # 128 and 32), and no key that says nothing about the run.
    assert (params["data.short_side"], params["data.window_frames"]) == ("64", "16")
    assert (params["data.flow_backend"], params["data.layout"]) == ("dis", "folders")
    assert not [k for k in params if k.startswith(("ingest.", "eval.", "detect."))]
    assert [k for k in params if k.startswith("flow.")] == ["flow.L"]
    for name in (
        "train/loss",
        "train/clip_top1",
        "val/clip_top1",
        "val/video_top1",
        "val/video_top5",
        "train/lr",
        "train/global_step",
    ):
        history = client.get_metric_history(result.run_id, name)
        assert [m.step for m in history] == [1, 2], name  # epochs, numbered from 1
        # What the run reports as its best epoch is what MLflow holds at that step.
        best = history[result.metrics["epoch"] - 1]
        assert best.value == pytest.approx(result.metrics[name]), name
    # Each worker's own report: its clips of each epoch (together, the training windows).
    own = {
        rank: {m.step: m.value for m in client.get_metric_history(result.run_id, name)}
        for rank in (0, 1)
        for name in [tracking.worker_metric(rank, tracking.WORKER_CLIPS)]
    }
    for epoch in (1, 2):
        assert own[0][epoch] > 0 and own[1][epoch] > 0
        assert own[0][epoch] + own[1][epoch] == int(params["data.windows_train"])
    assert tracking.WORKER_CLIPS not in run.data.metrics  # a worker's count, not the run's
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "checkpoint"} <= artifacts
    files = {a.path for a in client.list_artifacts(result.run_id, "checkpoint")}
    assert {"checkpoint/state.pt", "checkpoint/meta.yaml"} <= files


@pytest.mark.slow
def test_checkpoint_holds_the_model_and_its_run(trained):
    _, result = trained
    state, meta = load_checkpoint(result.checkpoint)
    assert meta["run_id"] == result.run_id
    assert meta["classes"] == sorted(
        ["translate_left", "translate_right", "translate_up", "translate_down"]
    )
    assert meta["epoch"] in (1, 2)
    assert Path(result.checkpoint).name == f"epoch_{meta['epoch']:03d}"
    assert f"best checkpoint (epoch {meta['epoch']}) {result.checkpoint}" in result.report()
    # The best epoch by the selection rule, recomputed from what MLflow logged.
    client = MlflowClient(tracking_uri=result.tracking_uri)
    top1, loss = (
        {m.step: m.value for m in client.get_metric_history(result.run_id, name)}
        for name in ("val/video_top1", "val/loss")
    )
    assert meta["epoch"] == max((1, 2), key=lambda e: (top1[e], -loss[e], e))
    assert any(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert state["scheduler"]["global_step"] == state["global_step"] > 0
    last, _ = load_checkpoint(result.last_checkpoint)
    assert last["epoch"] == 2 and last["scheduler"]["progress"] == pytest.approx(2.0)
    assert Path(result.last_checkpoint).name == "epoch_002"


@pytest.mark.slow
def test_two_worker_ddp_keeps_replicas_identical(trained_with_probe):
    """Both ranks took the same number of steps, and before the last the replicas were
    bitwise equal."""
    _, _, probed = trained_with_probe
    checksums = [(probed / f"rank{rank}.checksum").read_text() for rank in (0, 1)]
    assert checksums[0] == checksums[1] and int(checksums[0].split()[0]) > 1


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_resuming_from_a_missing_checkpoint_is_a_clear_error(
    ray_local, motion_data, tmp_path, scheme
):
    cfg = tiny_config(motion_data, tmp_path, f"train.resume_from={scheme}{tmp_path / 'nope'}")
    with pytest.raises(VidrayError, match=r"train.resume_from=.*nope: no such checkpoint"):
        run_training(cfg)


def test_a_storage_uri_pyarrow_cannot_open_is_a_clear_error(ray_local, motion_data, tmp_path):
    cfg = tiny_config(motion_data, tmp_path, "train.storage_path=nosuch://bucket/runs")
    with pytest.raises(VidrayError, match=r"nosuch://bucket/runs: not a filesystem pyarrow"):
        run_training(cfg)


@pytest.mark.slow
def test_resuming_another_model_or_class_list_or_a_finished_run_is_a_clear_error(
    trained, motion_data, tmp_path
):
    _, first = trained
    wider = tiny_config(
        motion_data, tmp_path, "model.width=16", f"train.resume_from={first.last_checkpoint}"
    )
    with pytest.raises(VidrayError, match=r"holds a 'simple3d' model that does not fit"):
        run_training(wider)
    other = tmp_path / "other_classes"
    shutil.copytree(first.last_checkpoint, other)
    meta = yaml.safe_load((other / "meta.yaml").read_text())
    meta["classes"] = ["a", "b", "c", "d"]
    (other / "meta.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(VidrayError, match=r"was trained on classes \['a', 'b', 'c', 'd'\]"):
        run_training(tiny_config(motion_data, tmp_path, f"train.resume_from={other}"))
    # Its last checkpoint has done all train.epochs=2: found before Ray trains nothing.
    done = tiny_config(motion_data, tmp_path, f"train.resume_from={first.last_checkpoint}")
    with pytest.raises(VidrayError, match=r"has already trained 2 epochs and train.epochs=2: "):
        run_training(done)


@pytest.mark.slow
def test_evaluate_logs_to_the_training_run(trained):
    _, result = trained
    report = run_evaluation(
        load_config(
            None,
            [f"eval.checkpoint={result.checkpoint}", f"mlflow.tracking_uri={result.tracking_uri}"],
        )
    )
    assert report.videos >= 4 and report.clips >= report.videos
    metrics = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id).data.metrics
    assert metrics["eval/val/video_top1"] == pytest.approx(report.metrics["eval/val/video_top1"])


def test_clip_longer_than_stored_windows_fails_before_training(ray_local, motion_data, tmp_path):
    with pytest.raises(VidrayError, match=r"spans 31 frames, but .* stores windows of 16"):
        run_training(tiny_config(motion_data, tmp_path, "clip.T=16"))


def test_crop_larger_than_stored_frames_fails_before_training(ray_local, motion_data, tmp_path):
    with pytest.raises(VidrayError, match=r"clip.crop=96 exceeds the stored short side 64"):
        run_training(tiny_config(motion_data, tmp_path, "clip.crop=96"))


def test_missing_val_split_is_a_clear_error(ray_local, motion_data, tmp_path):
    with pytest.raises(VidrayError, match=r"no windows in split 'holdout'"):
        run_training(tiny_config(motion_data, tmp_path, "train.val_split=holdout"))


def test_directory_that_is_not_an_ingest_output(ray_local, tmp_path):
    with pytest.raises(VidrayError, match=r"is not an ingest output"):
        run_training(tiny_config(tmp_path, tmp_path))


def test_unreachable_tracking_server_fails_at_start(ray_local, motion_data, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_config(motion_data, tmp_path, f"mlflow.tracking_uri=http://127.0.0.1:{port}")
    with pytest.raises(VidrayError, match=r"MLflow tracking server .* is not reachable"):
        run_training(cfg)


def test_evaluating_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(VidrayError, match=r"is not a vidray checkpoint"):
        run_evaluation(load_config(None, [f"eval.checkpoint={tmp_path}"]))


def test_unset_clip_parameters_come_from_the_model():
    from vidray.train.inputs import resolve_inputs

    cfg = resolve_inputs(load_config(None, ["model.name=simple3d"]))
    assert (cfg.clip.T, cfg.clip.crop, cfg.flow.L) == (8, 112, 0)
    cfg = resolve_inputs(load_config(None, ["model.name=simple3d", "clip.T=4", "clip.crop=56"]))
    assert (cfg.clip.T, cfg.clip.crop) == (4, 56)


def test_flow_stack_for_an_rgb_model_is_an_error():
    from vidray.train.inputs import resolve_inputs

    with pytest.raises(VidrayError, match=r"reads no optical flow: unset flow.L"):
        resolve_inputs(load_config(None, ["model.name=simple3d", "flow.L=4"]))


def test_a_knob_the_family_lacks_is_a_clear_error(ray_local, motion_data, tmp_path):
    with pytest.raises(VidrayError, match="takes no argument fusion; valid: width, dropout"):
        run_training(tiny_config(motion_data, tmp_path, "model.fusion=avg"))


def test_demo_baseline_fits_any_temporal_model():
    from vidray.demo import baseline_config
    from vidray.train.inputs import resolve_inputs

    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "demo.yaml",
        ["model.name=two_stream", "model.fusion=concat", "flow.L=8"],
    )
    baseline = resolve_inputs(baseline_config(cfg))
    assert baseline.model.name == "single_frame" and baseline.model.fusion is None
    assert (baseline.clip.T, baseline.flow.L, baseline.model.width) == (1, 0, cfg.model.width)
    assert resolve_inputs(cfg).flow.L == 8


def doctored(data: Path, tmp_path: Path, *, classes=None, label=None) -> Path:
    """A copy of ingest output ``data`` (shards linked) whose dataset.yaml lists
    ``classes`` instead, or whose first train video has label ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "doctored"
    copy.mkdir()
    (copy / "windows").symlink_to(data / "windows")
    info = yaml.safe_load((data / "dataset.yaml").read_text())
    if classes is not None:
        info["classes"] = classes
    (copy / "dataset.yaml").write_text(yaml.safe_dump(info))
    rows = pq.read_table(data / "manifest.parquet").to_pylist()
    if label is not None:
        first = next(r for r in rows if r["split"] == "train" and r["status"] == "ok")
        first["label"] = label
    schema = pq.read_schema(data / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), copy / "manifest.parquet")
    return copy


def test_labels_beyond_the_class_list_fail_before_training(ray_local, motion_data, tmp_path):
    three = yaml.safe_load((motion_data / "dataset.yaml").read_text())["classes"][:3]
    data = doctored(motion_data, tmp_path, classes=three)
    with pytest.raises(VidrayError, match=r"has label 3 .* dataset.yaml lists 3 classes"):
        run_training(tiny_config(data, tmp_path))


def test_an_unlabeled_training_video_fails_before_training(ray_local, motion_data, tmp_path):
    data = doctored(motion_data, tmp_path, label=-1)
    with pytest.raises(VidrayError, match=r"in split 'train' has no label"):
        run_training(tiny_config(data, tmp_path))


def test_the_train_command_exits_2_with_one_line_on_a_label_mismatch(motion_data, tmp_path):
    """The same check through ``python -m pipelines.train``, as a Ray job would run it."""
    from commands import run_module

    three = yaml.safe_load((motion_data / "dataset.yaml").read_text())["classes"][:3]
    data = doctored(motion_data, tmp_path, classes=three)
    out = run_module(
        "pipelines.train",
        "--data",
        str(data),
        *TINY,
        "ray.num_cpus=1",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "dataset.yaml lists 3 classes" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_a_negative_learning_rate_fails_before_training(ray_local, motion_data, tmp_path):
    with pytest.raises(VidrayError, match=r"optim.lr must be >= 0, got -0.1"):
        run_training(tiny_config(motion_data, tmp_path, "optim.lr=-0.1"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clip.mean=[0.45,0.45]", r"clip.mean needs 3 values \(R, G, B; std above 0\), got \[0.45"),
        ("clip.std=[0.2,0,0.2]", r"clip.std needs 3 values"),
    ],
)
def test_a_normalisation_of_other_than_3_values_fails_before_training(
    ray_local, motion_data, tmp_path, override, message
):
    with pytest.raises(VidrayError, match=message):
        run_training(tiny_config(motion_data, tmp_path, override))


def test_a_clip_the_model_cannot_take_is_a_one_line_error():
    from vidray.train.driver import check_model
    from vidray.train.inputs import resolve_inputs

    cfg = resolve_inputs(load_config(None, ["model.name=i3d", "clip.T=1"]))
    with pytest.raises(VidrayError, match=r"model 'i3d' cannot take clips of T=1, crop=224"):
        check_model(cfg, num_classes=4)


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_the_short_torchvision_weights_name_passes_the_check(name):
    """``model.pretrained=KINETICS400_V1``, as the builders' docstrings have it: the
    check finds it in the family's weights (nothing is downloaded); a name that is not
    there is one line naming a full one."""
    from vidray.train.driver import check_model
    from vidray.train.inputs import resolve_inputs

    check_model(
        resolve_inputs(
            load_config(None, [f"model.name={name}", "model.pretrained=KINETICS400_V1"])
        ),
        num_classes=4,
    )
    with pytest.raises(
        VidrayError, match=r"file not found: KINETICS_NOPE .*_Weights\.KINETICS400_V1"
    ):
        check_model(
            resolve_inputs(
                load_config(None, [f"model.name={name}", "model.pretrained=KINETICS_NOPE"])
            ),
            num_classes=4,
        )


class Broken(torch.nn.Module):
    """A family with a bug: its forward fails on any clip, its declared one included."""

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.fc(clip)  # (B, 3, T, H, W) into a Linear over 3 features: a shape bug


def test_a_bug_in_a_model_keeps_its_traceback(monkeypatch):
    from vidray.models import InputSpec, registry
    from vidray.train.driver import check_model
    from vidray.train.inputs import resolve_inputs

    entry = registry.ModelEntry("broken", Broken, "none", InputSpec(frames=4, crop=32))
    monkeypatch.setitem(registry._REGISTRY, "broken", entry)
    # Not a name the config accepts: set past its check, as a family under development.
    default = load_config(None, [])
    cfg = resolve_inputs(replace(default, model=replace(default.model, name="broken")))
    # Not "cannot take clips of T=4": the user's clip is the one the family declares.
    with pytest.raises(RuntimeError, match=r"must have same reduction dim"):
        check_model(cfg, num_classes=4)


def test_check_training_resolves_the_config_without_ray(motion_data):
    """What the CLI runs before it starts Ray: relative paths as a user types them, made
    absolute; the clip the model declares filled in; a mistake is one line; Ray is not
    imported (starting it is what costs 20-60 s)."""
    import json
    import os
    import subprocess
    import sys

    from commands import REPO

    script = f"""
import json, sys, time
from vidray.config import load_config
from vidray.errors import VidrayError
from vidray.train.driver import check_training

t0 = time.monotonic()
cfg = check_training(load_config(None, ["train.data={motion_data.name}", "clip.crop=48"]))
seconds = time.monotonic() - t0
try:
    check_training(load_config(None, ["train.data={motion_data.name}", "clip.T=16"]))
except VidrayError as exc:
    error = str(exc)
print(json.dumps({{"data": cfg.train.data, "storage": cfg.train.storage_path, "T": cfg.clip.T,
                  "error": error, "ray": "ray" in sys.modules, "seconds": seconds}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=motion_data.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert (found["data"], found["T"]) == (str(motion_data), 8)
    assert found["storage"] == str(motion_data.parent / "runs")
    assert f"spans 31 frames, but {motion_data} stores windows of 16" in found["error"]
    assert not found["ray"]


def test_a_run_is_planned_before_ray_train_starts(motion_data, tmp_path, monkeypatch):
    """What `run_training` settles before it calls Ray: typed in a fresh folder with a
    relative --data, the plan has absolute paths, a new run folder, the steps per epoch
    of the windows each worker gets, and the MLflow tags."""
    from vidray.train.driver import plan_training

    monkeypatch.chdir(tmp_path)
    data = os.path.relpath(motion_data, tmp_path)
    cfg = load_config(None, [f"train.data={data}", *TINY, "train.batch_size=4"])
    plan = plan_training(cfg, {"extra": "tag"})
    assert plan.cfg.train.data == str(motion_data) and plan.cfg.clip.T == 4
    assert (tmp_path / "runs" / plan.run_name).is_dir() and plan.task.name == "classify"
    # Two workers, batches of 4: ceil(ceil(train windows / 2) / 4) steps.
    assert plan.steps_per_epoch == math.ceil(math.ceil(plan.windows["train"] / 2) / 4) > 1
    assert plan.tags == {"vidray.task": "train", "extra": "tag"}
    again = plan_training(cfg)
    assert again.run_name != plan.run_name  # two plans, two run folders
