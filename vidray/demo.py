"""The end-to-end demo: a generated motion-only dataset -> ingest -> train -> evaluate.

It trains the lecture's baseline, a single-frame CNN, next to ``model.name``
(a temporal model) on the same windows and prints their val video accuracy
side by side, on a test split held out from training and from checkpoint
selection (``ingest.test_fraction``). Appearance carries no label in this dataset (every video is a
fresh random texture; the class is the motion), so the single-frame model
stays at chance and only the temporal model can do better: the lecture's
point, on one screen. Paths not set in the config go under ``demo_output/``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vidray.config import Config, ModelConfig
from vidray.data.ingest import run_ingest
from vidray.data.synthetic import write_motion_dataset
from vidray.train.driver import run_training
from vidray.train.evaluate import run_evaluation

DEMO_ROOT = Path("demo_output")
DEMO_CLASSES = 4
DEMO_VIDEOS_PER_CLASS = 24
DEMO_FRAMES = 40
BASELINE = "single_frame"


def baseline_config(cfg: Config) -> Config:
    """The single-frame baseline beside ``cfg``'s model: same width, data and training.

    Only the shared knobs carry over (a two-stream ``model.fusion`` would be an
    error for it), and its clip is what it declares: one frame, no flow.
    """
    model = ModelConfig(name=BASELINE, width=cfg.model.width, dropout=cfg.model.dropout)
    return replace(cfg, model=model, clip=replace(cfg.clip, T=None), flow=replace(cfg.flow, L=None))


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
    ingest = replace(
        cfg.ingest,
        input=cfg.ingest.input or str(videos),
        output=cfg.ingest.output or str(DEMO_ROOT / "data"),
        layout="folders",
    )
    cfg = replace(cfg, ingest=ingest, train=replace(cfg.train, data=ingest.output))
    print(run_ingest(cfg).report())

    accuracy = {}
    last_run = None
    for run_cfg in (baseline_config(cfg), cfg):
        name = run_cfg.model.name
        print(f"demo: training {name}")
        result = run_training(run_cfg)
        print(result.report())
        evaluation = run_evaluation(
            replace(
                run_cfg,
                eval=replace(cfg.eval, checkpoint=result.checkpoint, split="test"),
            )
        )
        print(evaluation.report())
        accuracy[name] = evaluation.metrics[f"eval/{evaluation.split}/video_top1"]
        last_run = result

    print(f"demo: test video accuracy (chance {1 / DEMO_CLASSES:.2f}):")
    for model_name, value in accuracy.items():
        print(f"demo:   {model_name:<14} {value:.3f}")
    print(f"demo: compare the runs in the MLflow UI: {last_run.ui_command()}")
    return 0
