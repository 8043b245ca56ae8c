"""`vidray evaluate` on a tiny checkpoint: multi-view metrics, report files, MLflow.

The checkpoint is built here (an untrained simple3d saved with `save_checkpoint`
into a run of a SQLite MLflow store): no Ray Train needed. The expected numbers
are recomputed by hand from the model's own logits on the same clips.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from untrained import save_untrained

from vidray import tracking
from vidray.config import load_config
from vidray.data.manifest import read_dataset_info, read_manifest
from vidray.data.reading import iter_clip_batches
from vidray.device import Normalization, model_input
from vidray.errors import VidrayError
from vidray.train.evaluate import run_evaluation
from vidray.train.loop import build_model

TINY = ["model.name=simple3d", "model.width=8", "clip.T=4", "clip.stride=2", "clip.crop=48"]


@pytest.fixture(scope="module")
def checkpoint(motion_data, tmp_path_factory):
    """(checkpoint dir, tracking uri, run id, config, classes, model) of an untrained model."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [*TINY, f"train.data={motion_data}", f"mlflow.tracking_uri={uri}"])
    classes = read_dataset_info(motion_data)["classes"]
    torch.manual_seed(0)
    model = build_model(cfg, len(classes))
    run_id = tracking.start_run(cfg, uri=uri, run_name="tiny-eval")
    directory = save_untrained(tmp_path / "checkpoint", model, cfg, classes, run_id=run_id)
    return directory, uri, run_id, cfg, classes, model.eval()


def evaluate(checkpoint, *overrides):
    directory, uri, *_ = checkpoint
    return run_evaluation(
        load_config(
            None, [f"eval.checkpoint={directory}", f"mlflow.tracking_uri={uri}", *overrides]
        )
    )


@pytest.fixture(scope="module")
def single_view(checkpoint):
    return evaluate(checkpoint)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@torch.no_grad()
def _hand_computed(checkpoint, **views):
    """Per video id: (label, mean softmax), and the clip top-1, from the model's logits."""
    _, _, _, cfg, _, model = checkpoint
    sums, counts, labels, clips_right, clips = defaultdict(float), defaultdict(int), {}, 0, 0
    for batch in iter_clip_batches(
        cfg.train.data, split="val", clip=cfg.clip, flow_L=0, video_ids=True, **views
    ):
        ids = batch.pop("video_id")
        logits = model(
            model_input(
                {k: torch.from_numpy(v) for k, v in batch.items()},
                "cpu",
                Normalization.of(cfg.clip),
            )
        )
        probs = torch.softmax(logits.double(), dim=1).numpy()
        for video_id, label, p in zip(ids, batch["label"], probs, strict=True):
            sums[video_id] = sums[video_id] + p
            counts[video_id] += 1
            labels[video_id] = int(label)
            clips_right += int(p.argmax() == label)
            clips += 1
    videos = {v: (labels[v], sums[v] / counts[v]) for v in sums}
    return videos, clips_right / clips, clips


def test_metrics_agree_with_a_hand_computation_from_the_logits(checkpoint, single_view):
    *_, classes, _ = checkpoint
    videos, clip_top1, clips = _hand_computed(checkpoint)
    assert single_view.clips == clips and single_view.videos == len(videos)
    right = [probs.argmax() == label for label, probs in videos.values()]
    per_class = defaultdict(list)
    for (label, _), ok in zip(videos.values(), right, strict=True):
        per_class[label].append(ok)
    m = single_view.metrics
    assert m["eval/val/clip_top1"] == pytest.approx(clip_top1)
    assert m["eval/val/video_top1"] == pytest.approx(np.mean(right))
    assert m["eval/val/video_top5"] == 1.0  # 4 classes: every label is in the top 5
    assert m["eval/val/mean_class_acc"] == pytest.approx(
        np.mean([np.mean(v) for v in per_class.values()])
    )
    # the predictions file says the same, video by video
    rows = _read_csv(single_view.output / "predictions.csv")
    assert sorted(r["video_id"] for r in rows) == sorted(videos)
    for row in rows:
        label, probs = videos[row["video_id"]]
        assert row["label"] == classes[label]
        assert row["predicted"] == classes[int(probs.argmax())]
        assert float(row["top1_score"]) == pytest.approx(probs.max(), abs=1e-5)
        assert [row[f"top{i}_class"] for i in range(1, 5)] == [
            classes[i] for i in np.argsort(-probs, kind="stable")
        ]
        assert "top5_class" not in row  # only 4 classes
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(m["eval/val/video_top1"])


def test_report_files_land_beside_the_checkpoint(checkpoint, single_view, motion_data):
    directory, *_, classes, _ = checkpoint
    assert single_view.output == directory / "eval_val"
    with Image.open(single_view.output / "confusion_matrix.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
    rows = _read_csv(single_view.output / "per_class.csv")
    assert [r["class"] for r in rows] == classes
    assert sum(int(r["videos"]) for r in rows) == single_view.videos
    correct = sum(int(r["correct"]) for r in rows)
    assert correct / single_view.videos == pytest.approx(single_view.metrics["eval/val/video_top1"])


def test_metrics_and_files_go_to_the_checkpoints_mlflow_run(checkpoint, single_view):
    _, uri, run_id, *_ = checkpoint
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(run_id).data.metrics
    for name in ("video_top1", "video_top5", "clip_top1", "mean_class_acc"):
        key = f"eval/val/{name}"
        assert logged[key] == pytest.approx(single_view.metrics[key])
    files = {a.path for a in client.list_artifacts(run_id, "eval_val")}
    assert files == {
        "eval_val/predictions.csv",
        "eval_val/per_class.csv",
        "eval_val/confusion_matrix.png",
    }
    local = Path(client.download_artifacts(run_id, "eval_val/predictions.csv"))
    assert local.read_text() == (single_view.output / "predictions.csv").read_text()


def test_three_crops_by_two_clips_give_six_times_the_clips(checkpoint, single_view, tmp_path):
    report = evaluate(
        checkpoint, "eval.temporal_views=2", "eval.spatial_views=3", f"eval.output={tmp_path}"
    )
    assert report.clips == 6 * single_view.clips and report.videos == single_view.videos
    assert report.output == tmp_path and (tmp_path / "predictions.csv").is_file()
    videos, clip_top1, clips = _hand_computed(checkpoint, temporal_views=2, spatial_views=3)
    assert clips == report.clips
    assert report.metrics["eval/val/clip_top1"] == pytest.approx(clip_top1)
    right = [probs.argmax() == label for label, probs in videos.values()]
    assert report.metrics["eval/val/video_top1"] == pytest.approx(np.mean(right))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.spatial_views=2", r"eval.spatial_views=2: must be 1 \(centre crop\) or 3"),
        ("eval.temporal_views=0", r"eval.temporal_views=0: needs at least 1 clip per window"),
    ],
)
def test_undefined_view_counts_are_one_line_errors(checkpoint, override, message):
    with pytest.raises(VidrayError, match=message) as info:
        evaluate(checkpoint, override)
    assert "\n" not in str(info.value)


def test_a_split_the_data_lacks_is_named_with_the_splits_it_has(checkpoint, motion_data):
    videos = Counter(r["split"] for r in read_manifest(motion_data) if r["status"] == "ok")
    assert sorted(videos) == ["train", "val"]
    with pytest.raises(VidrayError) as info:
        evaluate(checkpoint, "eval.split=test")
    assert str(info.value) == (
        f"{motion_data} has no split 'test'; its splits: "
        f"train ({videos['train']} videos), val ({videos['val']} videos)"
    )


def test_ray_batch_inference_predicts_what_the_in_process_path_does(
    checkpoint, single_view, tmp_path
):
    # The replicas load the checkpoint by URI, as they would from s3:// or gs://.
    directory, uri, *_ = checkpoint
    report = run_evaluation(
        load_config(
            None,
            [
                f"eval.checkpoint=file://{directory}",
                f"mlflow.tracking_uri={uri}",
                "eval.workers=1",
                f"eval.output={tmp_path}",
            ],
        )
    )
    assert (report.clips, report.videos) == (single_view.clips, single_view.videos)
    for name, value in single_view.metrics.items():
        assert report.metrics[name] == pytest.approx(value), name
    ray_rows = sorted(_read_csv(tmp_path / "predictions.csv"), key=lambda r: r["video_id"])
    local_rows = sorted(
        _read_csv(single_view.output / "predictions.csv"), key=lambda r: r["video_id"]
    )
    assert [(r["video_id"], r["predicted"]) for r in ray_rows] == [
        (r["video_id"], r["predicted"]) for r in local_rows
    ]
    for a, b in zip(ray_rows, local_rows, strict=True):
        assert float(a["top1_score"]) == pytest.approx(float(b["top1_score"]), abs=1e-5)


def test_the_evaluate_command_takes_views_and_output_as_flags(checkpoint, single_view, tmp_path):
    from commands import run_module

    directory, uri, *_ = checkpoint
    out = run_module(
        "vidray.cli",
        "evaluate",
        f"--checkpoint=file://{directory}",
        *("--temporal-views", "2", "--spatial-views", "3", "--output", str(tmp_path / "out")),
        f"mlflow.tracking_uri={uri}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert len(rows) == single_view.videos
    assert "(6 per window)" in out.stdout, out.stdout


def test_a_remote_checkpoint_reports_under_eval_by_run_and_epoch():
    from vidray.train.evaluate import default_output

    assert default_output("s3://bucket/runs/tiny-run/checkpoint_000002", "test") == Path(
        "eval/tiny-run_checkpoint_000002_test"
    )
    assert default_output("/x/ckpt", "val") == Path("/x/ckpt/eval_val")
