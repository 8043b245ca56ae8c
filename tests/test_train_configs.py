"""The shipped training configs: one per family for UCF101, Kinetics-400 and the CPU demo.

Each file under configs/train/ must load, name a registered family, and read a
clip that the windows of its dataset's ingest config hold. The dataset is found
by path: a train config's ``train.data`` is some ingest config's ``ingest.output``.
Real-dataset models are built on the meta device (shapes only, no memory or
compute); the demo configs train one step on a real ingested batch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import get_model, get_model_weights, get_weight, list_models

import vidray.detect  # noqa: F401  (registers train.task=detect, which slowfast_ava.yaml trains)
from vidray.config import Config, load_config
from vidray.data.manifest import STORAGE_KEYS, read_dataset_info
from vidray.data.reading import iter_clip_batches
from vidray.device import Normalization, to_device
from vidray.models import available
from vidray.train.driver import check_data
from vidray.train.inputs import resolve_inputs
from vidray.train.loop import build_model
from vidray.train.tasks import task_of

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TRAIN = CONFIGS / "train"
# Files a family config extends; they are not trained on their own.
TRAIN_FILES = sorted(p for p in TRAIN.rglob("*.yaml") if not p.name.startswith("_"))
DEMO_FILES = [p for p in TRAIN_FILES if p.parent.name == "demo" or p.name == "demo.yaml"]
DATASET_DIRS = ("ucf101", "kinetics400", "demo")
# Classes of each ingest layout's dataset: what the classifier heads are built for.
CLASSES = {"ucf101": 101, "kinetics": 400, "folders": 4, "ava": 80}
# Families with a config in every dataset directory; slowfast_r101 (8x8) is Kinetics' and
# the demo's only, simple3d is configs/train/demo.yaml. MViT and S3D need 224-px frames
# (MViT exactly 16x224), which the demo's 64-px windows do not hold.
OPTIONAL = {"simple3d", "slowfast_r101"}
NOT_IN_DEMO = {"mvit_v1_b", "mvit_v2_s", "s3d"}


def _id(path: Path) -> str:
    return str(path.relative_to(TRAIN))


def _ingest_by_output() -> dict[str, Config]:
    configs = [load_config(p) for p in sorted((CONFIGS / "ingest").glob("*.yaml"))]
    return {cfg.ingest.output: cfg for cfg in configs}


def _dataset_info(ingest: Config) -> dict:
    """The dataset.yaml an ingest with this config writes (storage, classes)."""
    flat = ingest.flat()
    n = CLASSES[ingest.ingest.layout]
    return {
        "storage": {k: flat[k] for k in STORAGE_KEYS},
        "classes": [f"c{i}" for i in range(n)],
        "layout": ingest.ingest.layout,
    }


@pytest.mark.parametrize("directory", DATASET_DIRS)
def test_every_family_has_a_config_per_dataset(directory):
    files = sorted((TRAIN / directory).glob("[!_]*.yaml"))
    names = {load_config(p).model.name: p.stem for p in files}
    exempt = OPTIONAL | (NOT_IN_DEMO if directory == "demo" else set())
    assert set(available()) - exempt <= set(names)
    assert all(stem == name for name, stem in names.items())  # file named for its family


@pytest.mark.parametrize("path", TRAIN_FILES, ids=_id)
def test_config_starts_with_a_comment_naming_its_family(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and load_config(path).model.name in first


@pytest.mark.parametrize("path", TRAIN_FILES, ids=_id)
def test_config_fits_its_datasets_windows_and_builds(path):
    cfg = resolve_inputs(load_config(path))
    ingest = _ingest_by_output().get(cfg.train.data)
    assert ingest is not None, f"train.data={cfg.train.data} is no ingest config's output"
    info = _dataset_info(ingest)
    if cfg.model.pretrained:
        # Loading would fetch the weights: `test_pretrained_names_fit_their_family` loads
        # weights of the same shapes instead, and the build below leaves them out.
        cfg = replace(cfg, model=replace(cfg.model, pretrained=""))
    with torch.device("meta"):
        check_data(cfg, info)  # the driver's checks: clip span and crop, flow, model arguments
        model = build_model(cfg, num_classes=len(info["classes"]))
        logits = model(*task_of(cfg).example(cfg, device="meta"))
    assert logits.shape == (1, len(info["classes"]))


@pytest.mark.parametrize("path", DEMO_FILES, ids=_id)
def test_demo_config_trains_a_step_on_ingested_windows(motion_data, path):
    torch.manual_seed(0)
    cfg = resolve_inputs(load_config(path, [f"train.data={motion_data}"]))
    info = read_dataset_info(motion_data)
    check_data(cfg, info)
    batch = next(
        iter_clip_batches(
            motion_data, split="train", clip=cfg.clip, flow_L=cfg.flow.L, train=True, batch_rows=4
        )
    )
    batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    model = build_model(cfg, num_classes=len(info["classes"]))
    logits = model(to_device(batch, torch.device("cpu"), Normalization.of(cfg.clip)))
    assert logits.shape == (len(batch["label"]), len(info["classes"]))
    loss = F.cross_entropy(logits, batch["label"])
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# One config per distinct model section: the datasets' configs of a family often share it.
PRETRAINED = list(
    {repr(load_config(p).model): p for p in TRAIN_FILES if load_config(p).model.pretrained}.values()
)


@pytest.mark.slow  # full-size networks built twice, randomly initialised: up to 30 s each
@pytest.mark.parametrize("path", PRETRAINED, ids=_id)
def test_pretrained_names_fit_their_family(path, tmp_path):
    """The torchvision weights a config names load into its model: the architecture
    they belong to, built here untrained and saved, gives a state_dict of their shapes
    (nothing is downloaded)."""
    cfg = load_config(path)
    enum = type(get_weight(cfg.model.pretrained))
    (architecture,) = [m for m in list_models() if get_model_weights(m) is enum]
    weights = tmp_path / f"{architecture}.pt"
    torch.save(get_model(architecture, weights=None).state_dict(), weights)
    build_model(resolve_inputs(load_config(path, [f"model.pretrained={weights}"])), num_classes=4)
