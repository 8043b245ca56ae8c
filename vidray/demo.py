"""The end-to-end demo: a generated motion-only dataset -> ingest -> train -> evaluate.

Paths not set in the config go under ``demo_output/``. Appearance carries no
label in this dataset (every video is a fresh random texture; the class is
the motion), so accuracy far above chance means the model uses time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vidray.config import Config
from vidray.data.ingest import run_ingest
from vidray.data.synthetic import write_motion_dataset
from vidray.train.driver import run_training
from vidray.train.evaluate import run_evaluation

DEMO_ROOT = Path("demo_output")
DEMO_CLASSES = 4
DEMO_VIDEOS_PER_CLASS = 16
DEMO_FRAMES = 40


def run_demo(cfg: Config) -> int:
    videos = DEMO_ROOT / "videos"
    print(
        f"demo: writing {DEMO_CLASSES} motion classes x {DEMO_VIDEOS_PER_CLASS} videos to {videos}"
    )
    write_motion_dataset(
        videos,
        classes=DEMO_CLASSES,
        videos_per_class=DEMO_VIDEOS_PER_CLASS,
        num_frames=DEMO_FRAMES,
        seed=cfg.train.seed,
    )
    cfg = replace(
        cfg,
        ingest=replace(
            cfg.ingest,
            input=cfg.ingest.input or str(videos),
            output=cfg.ingest.output or str(DEMO_ROOT / "data"),
            layout="folders",
        ),
    )
    summary = run_ingest(cfg)
    print(summary.report())
    cfg = replace(
        cfg,
        train=replace(
            cfg.train,
            data=cfg.ingest.output,
            storage_path=cfg.train.storage_path or str(DEMO_ROOT / "runs"),
        ),
    )
    result = run_training(cfg)
    print(result.report())
    report = run_evaluation(
        replace(
            cfg, eval=replace(cfg.eval, checkpoint=result.checkpoint, split=cfg.train.val_split)
        )
    )
    print(report.report())
    print(
        f"demo: val video accuracy {report.metrics[f'eval/{report.split}/video_top1']:.3f} "
        f"(chance {1 / DEMO_CLASSES:.3f})"
    )
    print(f"demo: open the MLflow UI on this run: {result.ui_command()}")
    return 0
